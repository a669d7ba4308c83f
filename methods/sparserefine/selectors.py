"""What pixel selectors are made of (paper §3.2, Table 5a, supplementary §2.1): entropy, feature
magnitude, the LR errors, the learnable selector's network, density thresholds and the counts every
selector is judged by against the pixels the LR prediction gets wrong (recall, precision, density).

The selectors themselves, one class per kind, are in :mod:`methods.sparserefine.selection`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from methods.metrics import class_map
from methods.sparse.nn import weight_dtype

ENTROPY_EPS = 1e-5  # the official code clamps probabilities at 1e-5 before the log


def class_softmax(logits: torch.Tensor, dim: int = -1, log: bool = False) -> torch.Tensor:
    """softmax (``log``: log_softmax) of ``logits`` along ``dim``.

    Per-pixel logits [N, C] are normalised on a transposed copy: torch's CPU kernel along a short
    contiguous last dim (C = 2..20 classes) is ~15x slower than across a long one (84k x 11 here:
    6.1 ms against 0.36 ms), and the refiner's training spends its time on exactly these."""
    fn = torch.log_softmax if log else torch.softmax
    if logits.dim() == 2 and dim in (-1, 1) and logits.device.type == "cpu":
        return fn(logits.t().contiguous(), dim=0).t()
    return fn(logits, dim=dim)


def entropy_map(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Per-pixel entropy −Σ p·log(max(p, 1e-5)) of softmax(logits) along ``dim`` (kept out)."""
    return entropy_of_probs(class_softmax(logits.float(), dim=dim), dim)


def entropy_of_probs(probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``entropy_map`` from probabilities already computed (saves a softmax)."""
    return -(probs * torch.log(probs.clamp(min=ENTROPY_EPS))).sum(dim=dim)


def feature_magnitude(features: torch.Tensor) -> torch.Tensor:
    """L2 norm over channels of the penultimate features [B, F, H, W] -> [B, H, W]."""
    return torch.linalg.vector_norm(features.float(), dim=1)


def lr_errors(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Pixels the LR prediction gets wrong (ignored pixels are never errors)."""
    return prediction_errors(class_map(logits), labels, ignore_index)


def prediction_errors(prediction: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Pixels where a class map differs from the labels (ignored pixels are never errors)."""
    return (prediction != labels) & (labels != ignore_index)


class LearnableSelector(nn.Module):
    """Supplementary §2.1: two 3×3 convs on RGB, concatenated with the logits, an MLP to one score.

    ``forward`` returns the per-pixel probability that the LR prediction is wrong, [B, H, W];
    ``select`` thresholds it. The MLP runs as 1×1 convolutions (the same per-pixel linear layers).
    """

    def __init__(
        self,
        num_classes: int,
        hidden_channels: int = 16,
        out_channels: int = 16,
        mlp_hidden: int = 32,
    ):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(3, hidden_channels, 3, 1, 1),
            nn.ReLU(),
            nn.Conv2d(hidden_channels, out_channels, 3, 1, 1),
            nn.ReLU(),
        )
        self.mlp = nn.Sequential(
            nn.Conv2d(num_classes + out_channels, mlp_hidden, 1),
            nn.ReLU(),
            nn.Conv2d(mlp_hidden, mlp_hidden, 1),
            nn.ReLU(),
            nn.Conv2d(mlp_hidden, 1, 1),
        )

    def score_logits(self, image: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid scores [B, H, W]; image is normalised RGB [B, 3, H, W]. The MLP runs in fp32
        even under autocast: bf16 scores would tie at the threshold and coarsen its calibration."""
        rgb = self.conv(image)
        with torch.autocast(image.device.type, enabled=False):
            dtype = weight_dtype(self.mlp)  # fp32 under autocast; a timed bf16/fp16 model's own dtype
            feats = torch.cat([rgb.to(dtype), logits.to(dtype)], dim=1)
            return self.mlp(feats)[:, 0]

    def forward(self, image: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.score_logits(image, logits))

    def select(self, image: torch.Tensor, logits: torch.Tensor, threshold: float) -> torch.Tensor:
        return self.forward(image, logits) > threshold


@dataclass
class SelectionCounts:
    """Running counts for density / recall / precision of a selector against the LR errors."""

    selected: int = 0
    errors: int = 0
    hits: int = 0  # selected and an error
    pixels: int = 0

    def update(self, mask: torch.Tensor, errors: torch.Tensor) -> None:
        self.selected += int(mask.sum())
        self.errors += int(errors.sum())
        self.hits += int((mask & errors).sum())
        self.pixels += mask.numel()

    @property
    def density(self) -> float:
        return 100.0 * self.selected / max(self.pixels, 1)

    @property
    def recall(self) -> float:
        return 100.0 * self.hits / max(self.errors, 1)

    @property
    def precision(self) -> float:
        return 100.0 * self.hits / max(self.selected, 1)

    def as_dict(self) -> dict[str, float]:
        return {
            "density": self.density,
            "recall": self.recall,
            "precision": self.precision,
        }


Chunks = Callable[[], Iterable[torch.Tensor]]  # re-iterable source of values, a few at a time
_HALF_BITS = 16
_HALF_BINS = 1 << _HALF_BITS


def _sortable_keys(values: torch.Tensor) -> torch.Tensor:
    """The float32 ``values`` as int64 keys in [0, 2**32) ordered like the floats (-0.0 just below
    +0.0). NaN has no rank: it is refused."""
    values = values.reshape(-1).float().contiguous()
    if bool(values.isnan().any()):
        raise ValueError("cannot rank NaN scores (the LR outputs or the selector's scores hold NaN)")
    bits = values.view(torch.int32).long()
    return torch.where(bits >= 0, bits + (1 << 31), -1 - bits)


def _key_value(key: int) -> float:
    bits = key - (1 << 31) if key >= (1 << 31) else -1 - key
    return float(torch.tensor([bits], dtype=torch.int32).view(torch.float32))


def order_statistics(chunks: Chunks, ranks_of: Callable[[int], Sequence[int]]) -> tuple[int, list[float]]:
    """The values at 0-based ascending ``ranks_of(n)`` of all ``n`` values the chunks hold, exactly
    (as ``torch.sort`` of their concatenation would give), in two passes that keep one chunk and two
    histograms of 2**16 bins: the first counts the high 16 bits of each value's order-preserving
    32-bit key, the second the low 16 bits within the bins the ranks fall in. Returns ``(n, values)``.
    """
    high = torch.zeros(_HALF_BINS, dtype=torch.int64)
    for chunk in chunks():
        high += torch.bincount(_sortable_keys(chunk) >> _HALF_BITS, minlength=_HALF_BINS)
    n = int(high.sum())
    ranks = [int(r) for r in ranks_of(n)]
    if not ranks:
        return n, []
    if any(not 0 <= r < n for r in ranks):
        raise ValueError(f"ranks {ranks} out of range for {n} values")
    below = torch.cumsum(high, 0)  # below[b]: values whose high bits are <= b
    bins = [int(torch.searchsorted(below, r, right=True)) for r in ranks]
    wanted = sorted(set(bins))
    low = {b: torch.zeros(_HALF_BINS, dtype=torch.int64) for b in wanted}
    for chunk in chunks():
        keys = _sortable_keys(chunk)
        top = keys >> _HALF_BITS
        for b in wanted:
            low[b] += torch.bincount(keys[top == b] & (_HALF_BINS - 1), minlength=_HALF_BINS)
    values = []
    for r, b in zip(ranks, bins, strict=True):
        within = r - (int(below[b - 1]) if b > 0 else 0)
        k = int(torch.searchsorted(torch.cumsum(low[b], 0), within, right=True))
        values.append(_key_value((b << _HALF_BITS) | k))
    return n, values


def strided(chunks: Chunks, total: int, max_samples: int) -> Chunks:
    """Every s-th value of the concatenated chunks (``total`` values; s = total // max_samples + 1
    when there are more than ``max_samples``, else 1): a deterministic subsample, chunk by chunk."""
    stride = total // max_samples + 1 if total > max_samples else 1
    if stride == 1:
        return chunks

    def sampled() -> Iterator[torch.Tensor]:
        offset = 0
        for chunk in chunks():
            flat = chunk.reshape(-1)
            yield flat[(-offset) % stride :: stride]
            offset += flat.numel()

    return sampled


def streamed_threshold_for_density(chunks: Chunks, total: int, density: float, max_samples: int = 2_000_000) -> float:
    """The score threshold above which a fraction ``density`` of the scores lies, over scores read
    chunk by chunk (``total`` of them): bit-identical to ``torch.quantile(flat, 1 - density)`` of the
    concatenated scores, ``flat`` the stride subsample of :func:`strided` (kept so thresholds match
    those computed before the calibration streamed; the quantile itself is exact at any size)."""
    sample = strided(chunks, total, max_samples)
    if density >= 1.0:
        return order_statistics(sample, lambda n: [0])[1][0] - 1.0
    if density <= 0.0:
        return order_statistics(sample, lambda n: [n - 1])[1][0]
    # torch.quantile's linear interpolation, in its float32 arithmetic
    q = torch.tensor([1.0 - density], dtype=torch.float32)
    rank = q  # the fractional rank q * (n - 1), set once the count n is known

    def ranks_of(n: int) -> list[int]:
        nonlocal rank
        rank = q * (n - 1)
        return [int(rank.long()), int(rank.ceil().long())]

    _, (lower, upper) = order_statistics(sample, ranks_of)
    weight = rank - rank.long()
    below = torch.tensor([lower], dtype=torch.float32)
    return float(below.lerp(torch.tensor([upper], dtype=torch.float32), weight))


def threshold_for_density(scores: torch.Tensor, density: float, max_samples: int = 2_000_000) -> float:
    """The score threshold above which a fraction ``density`` of ``scores`` lies.

    Large inputs are subsampled with a fixed stride (deterministic), enough for a quantile.
    """
    return streamed_threshold_for_density(lambda: [scores], scores.numel(), density, max_samples)
