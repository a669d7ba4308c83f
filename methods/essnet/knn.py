"""Nearest-class-embedding search behind one small interface, with two backends.

- ``faiss``: an exact inner-product index (``IndexFlatIP``), on the GPU when faiss has one;
- ``torch``: ``queries @ embeddings.T`` and ``topk``, in query chunks so that the score matrix
  of one chunk stays under ``chunk_bytes`` (memory is bounded whatever the number of classes).
Embeddings and queries are expected L2-normalised, so the largest inner product is the nearest
neighbour in Euclidean distance as well (ESSNet normalises both).
"""

from __future__ import annotations

from typing import Protocol

import torch

from harness.errors import Unavailable

BACKENDS = ("faiss", "torch")


class ClassIndex(Protocol):
    num_classes: int

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores [N,k] float32, class indices [N,k] int64), best first."""
        ...


def check_backend(name: str) -> None:
    if name not in BACKENDS:
        raise ValueError(f"unknown nearest-neighbour backend {name!r}; known: {BACKENDS}")
    if name == "faiss":
        try:
            import faiss  # noqa: F401
        except ImportError as exc:
            raise Unavailable(f"faiss is not installed ({exc})") from None


class TorchIndex:
    def __init__(self, embeddings: torch.Tensor, chunk_bytes: int = 64 << 20) -> None:
        self.embeddings = embeddings.detach()
        self.num_classes = embeddings.shape[0]
        self.chunk_bytes = chunk_bytes

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        table = self.embeddings.to(queries.device, queries.dtype)
        rows = max(1, self.chunk_bytes // (self.num_classes * queries.element_size()))
        scores, indices = [], []
        for chunk in queries.split(rows):
            top = torch.topk(chunk @ table.t(), k, dim=1)
            scores.append(top.values.float())
            indices.append(top.indices)
        return torch.cat(scores), torch.cat(indices)


class FaissIndex:
    def __init__(self, embeddings: torch.Tensor, use_gpu: bool = True) -> None:
        import faiss

        table = embeddings.detach().float().cpu().contiguous().numpy()
        self.num_classes, dim = table.shape
        index = faiss.IndexFlatIP(dim)
        self.on_gpu = bool(use_gpu and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0)
        if self.on_gpu:
            self._resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._resources, 0, index)
        index.add(table)
        self.index = index

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        import faiss

        # the same thread count as torch (the harness's --threads), not OpenMP's own default
        faiss.omp_set_num_threads(torch.get_num_threads())
        device = queries.device
        scores, indices = self.index.search(queries.detach().float().cpu().contiguous().numpy(), k)
        return torch.from_numpy(scores).to(device), torch.from_numpy(indices).long().to(device)


def build_index(embeddings: torch.Tensor, backend: str, chunk_bytes: int = 64 << 20) -> ClassIndex:
    """An index over class embeddings [C, D] with the named backend (``check_backend`` first)."""
    check_backend(backend)
    if backend == "faiss":
        return FaissIndex(embeddings, use_gpu=embeddings.is_cuda)
    return TorchIndex(embeddings, chunk_bytes)
