"""Ensemblers: combine the LR logits y1 and the refined logits y2 at the selected pixels
(paper §3.2 eq. 1, supplementary §2.2, Table 5e). All take per-pixel logits [N, C]."""

from __future__ import annotations

import torch
from torch import nn

from methods.sparserefine.selectors import class_softmax, entropy_map, entropy_of_probs

ENSEMBLERS = ("direct", "entropy", "gated", "oracle")


class DirectEnsembler(nn.Module):
    """Replace the LR logits by the refined ones."""

    def forward(self, y1: torch.Tensor, y2: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return y2


class EntropyEnsembler(nn.Module):
    """Per pixel keep whichever logit vector has the lower entropy (ties keep the LR one)."""

    def forward(self, y1: torch.Tensor, y2: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        e1 = entropy_map(y1, dim=-1)
        e2 = entropy_map(y2, dim=-1)
        return torch.where((e1 <= e2).unsqueeze(-1), y1, y2.to(y1.dtype))


class OracleEnsembler(nn.Module):
    """Per pixel keep the better of the two by the ground truth: the one that predicts the label,
    else (both right or both wrong) the one giving the label the higher probability."""

    def forward(self, y1: torch.Tensor, y2: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is None:
            raise ValueError("the oracle ensembler needs the ground-truth labels")
        safe = labels.clamp(0, y1.shape[-1] - 1).unsqueeze(-1)
        p1 = class_softmax(y1.float()).gather(-1, safe)
        p2 = class_softmax(y2.float()).gather(-1, safe)
        right1 = y1.argmax(-1, keepdim=True) == safe
        right2 = y2.argmax(-1, keepdim=True) == safe
        take2 = (right2 & ~right1) | ((right1 == right2) & (p2 > p1))
        return torch.where(take2, y2.to(y1.dtype), y1)


class GatedEnsembler(nn.Module):
    """Gate g([softmax(y1), e1, softmax(y2), e2]) -> 2 weights (softmax), weighted sum of the two
    logit vectors, then the fuser f (C -> hidden -> C). Hidden 64 as in the paper."""

    def __init__(self, num_classes: int, hidden: int = 64):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(2 * (num_classes + 1), hidden), nn.ReLU(), nn.Linear(hidden, 2))
        self.fuser = nn.Sequential(nn.Linear(num_classes, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
        self._identity_init(num_classes, hidden)
        with torch.no_grad():  # start trusting the LR logits (w ≈ 0.95): the refinement earns its weight
            self.gate[2].bias.copy_(torch.tensor([1.5, -1.5]))

    @torch.no_grad()
    def _identity_init(self, num_classes: int, hidden: int) -> None:
        """Start the fuser as the identity (x = relu(x) − relu(−x) in its first 2C hidden units; the
        paper does not say how f is initialised): a short CPU schedule then starts from the weighted
        mix of the two predictions instead of a random map of it. Needs hidden >= 2C."""
        if hidden < 2 * num_classes:
            return
        first, last = self.fuser[0], self.fuser[2]
        eye = torch.eye(num_classes)
        first.weight[: 2 * num_classes] = torch.cat([eye, -eye])
        first.bias[: 2 * num_classes] = 0.0
        last.weight.zero_()
        last.weight[:, : 2 * num_classes] = torch.cat([eye, -eye], dim=1)
        last.bias.zero_()

    def weights(self, y1: torch.Tensor, y2: torch.Tensor) -> torch.Tensor:
        """The two per-pixel weights [N, 2] (w for y1, 1 − w for y2)."""
        p1 = class_softmax(y1.float())
        p2 = class_softmax(y2.float())
        e1 = entropy_of_probs(p1, dim=-1).unsqueeze(-1)
        e2 = entropy_of_probs(p2, dim=-1).unsqueeze(-1)
        gate_in = torch.cat([p1, e1, p2, e2], dim=-1).to(self.gate[0].weight.dtype)
        return class_softmax(self.gate(gate_in))

    def forward(self, y1: torch.Tensor, y2: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        w = self.weights(y1, y2)
        dtype = self.fuser[0].weight.dtype
        mixed = w[:, :1].to(dtype) * y1.to(dtype) + w[:, 1:].to(dtype) * y2.to(dtype)
        return self.fuser(mixed)


def build_ensembler(name: str, num_classes: int) -> nn.Module:
    if name == "direct":
        return DirectEnsembler()
    if name == "entropy":
        return EntropyEnsembler()
    if name == "gated":
        return GatedEnsembler(num_classes)
    if name == "oracle":
        return OracleEnsembler()
    raise ValueError(f"unknown ensembler {name!r}; known: {ENSEMBLERS}")
