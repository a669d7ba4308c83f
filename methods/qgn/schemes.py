"""Propagation schemes (QGN §3.3), level-loss weighting (eq. 6-8) and the leaf inference rule (§3.2).

A scheme decides, at each decoder level, which active sites are propagated to the next (finer)
level; the others become leaves of the predicted quadtree.

- ``all``: every site is propagated down to the pixels.
- ``gtc``: sites whose ground-truth T-pyramid value is composite (needs the labels).
- ``pc``: sites whose prediction's arg-max is the composite class.
"""

from __future__ import annotations

import torch

SCHEMES = ("all", "gtc", "pc")
GAMMAS = ("0.75", "1", "1.25", "adaptive")


def propagation_mask(scheme: str, logits: torch.Tensor, targets: torch.Tensor | None, composite: int) -> torch.Tensor:
    """Bool ``[N]``: which of the ``N`` active sites (``logits [N, k+1]``) to propagate.

    ``targets [N]`` are the T-pyramid values at the sites (composite = ``composite``), needed by
    ``gtc`` only.
    """
    if scheme == "all":
        return torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)
    if scheme == "gtc":
        if targets is None:
            raise ValueError("the GTC propagation scheme needs the ground-truth T-pyramid")
        return targets == composite
    if scheme == "pc":
        return logits.argmax(dim=1) == composite
    raise ValueError(f"unknown propagation scheme {scheme!r}; known: {SCHEMES}")


def leaf_labels(logits: torch.Tensor, composite: int) -> torch.Tensor:
    """Class of each leaf ``[N]`` from ``logits [N, k+1]``: the arg-max, or the runner-up when the
    composite class wins (§3.2). Equivalent to the arg-max over the k real classes."""
    keep = torch.ones(logits.shape[1], dtype=torch.bool, device=logits.device)
    keep[composite] = False
    real = torch.arange(logits.shape[1], device=logits.device)[keep]
    return real[logits[:, keep].argmax(dim=1)]


class LevelWeights:
    """Loss weights beta_l of eq. 6.

    - fixed gamma (eq. 7): ``beta_0 = 1``, ``beta_{l+1} = gamma * beta_l``, so ``beta_l = gamma**l``.
    - ``adaptive`` (eq. 8): ``beta_l`` starts at 1 and follows ``beta <- delta*beta + (1-delta)*L_l``
      after every iteration, where ``L_l`` is that iteration's (detached) level loss. This follows the
      equation as printed, where the weight is the running average itself (the AdaLoss of the
      cited [17] uses its inverse; we do not).
    """

    def __init__(self, levels: int, gamma: str, delta: float = 0.99):
        if gamma not in GAMMAS:
            raise ValueError(f"gamma must be one of {GAMMAS}, got {gamma!r}")
        self.levels = levels
        self.adaptive = gamma == "adaptive"
        self.delta = delta
        if self.adaptive:
            self.beta = [1.0] * (levels + 1)
        else:
            g = float(gamma)
            self.beta = [g**level for level in range(levels + 1)]

    def weight(self, level: int) -> float:
        return self.beta[level]

    def update(self, level_losses: dict[int, float]) -> None:
        """Adaptive only: fold this iteration's level losses into the running averages."""
        if not self.adaptive:
            return
        for level, loss in level_losses.items():
            self.beta[level] = self.delta * self.beta[level] + (1.0 - self.delta) * float(loss)
