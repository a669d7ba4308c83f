"""ESSNet: the nearest-neighbour backends agree; heads predict; negative sampling; memory accounting."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from methods.essnet.heads import EmbeddingHead, LinearHead, knn_sampled_loss
from methods.essnet.knn import TorchIndex, build_index, check_backend
from methods.essnet.memory import peak_tensor_bytes
from methods.essnet.trials import crossover


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


@pytest.mark.parametrize("num_classes", [19, 1284])
def test_faiss_and_torch_backends_return_the_same_neighbours(num_classes: int) -> None:
    check_backend("faiss")
    classes, queries = _unit(num_classes, 32, 0), _unit(3000, 32, 1)
    f_scores, f_idx = build_index(classes, "faiss").search(queries, 5)
    t_scores, t_idx = build_index(classes, "torch").search(queries, 5)
    assert torch.equal(f_idx, t_idx)
    assert torch.allclose(f_scores, t_scores, atol=1e-5)
    brute = (queries @ classes.t()).argmax(1)
    assert torch.equal(t_idx[:, 0], brute)


def test_torch_backend_chunks_bound_the_score_matrix() -> None:
    classes, queries = _unit(500, 8, 2), _unit(1000, 8, 3)
    index = TorchIndex(classes, chunk_bytes=500 * 4 * 64)  # 64 query rows per chunk
    _, peak = peak_tensor_bytes(lambda: index.search(queries, 1))
    assert peak < 500 * 4 * 64 * 3  # one chunk's scores and top-k, never the 1000 x 500 matrix
    assert torch.equal(index.search(queries, 1)[1][:, 0], (queries @ classes.t()).argmax(1))


def test_embedding_head_predicts_the_nearest_class_at_full_resolution() -> None:
    torch.manual_seed(0)
    head = EmbeddingHead(16, 40, 8)
    features = torch.randn(2, 16, 5, 7)
    with torch.no_grad():
        labels = head.predict(features, (20, 28), head.build_index("torch"))
        emb = head(features, (20, 28))
    assert labels.shape == (2, 20, 28)
    expected = torch.einsum("bdhw,cd->bchw", emb, head.normalized_classes()).argmax(1)
    assert torch.equal(labels, expected)
    assert LinearHead(16, 40).predict(features, (20, 28)).shape == (2, 20, 28)


def test_embedding_head_on_class_prototypes_is_100_percent_right_on_both_backends() -> None:
    """Features that one-hot encode the label and a projection whose columns are the class embeddings:
    every pixel embedding IS its class's prototype, so the nearest class is the label (100 %), and the
    faiss and torch indexes return the same classes."""
    num_classes, dim, height, width = 30, 8, 6, 10
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, num_classes, (2, height, width), generator=generator)
    head = EmbeddingHead(num_classes, num_classes, dim)
    with torch.no_grad():
        head.project.weight.copy_(head.normalized_classes().t()[:, :, None, None])
        head.project.bias.zero_()
        features = F.one_hot(labels, num_classes).permute(0, 3, 1, 2).float()
        # at the feature resolution the bilinear resize is the identity
        by_backend = {b: head.predict(features, (height, width), head.build_index(b)) for b in ("faiss", "torch")}
    assert torch.equal(by_backend["torch"], labels)
    assert torch.equal(by_backend["faiss"], labels)


def test_knn_negatives_are_the_hardest_other_classes() -> None:
    classes = _unit(50, 8, 4).requires_grad_(True)
    pixels = _unit(200, 8, 5)
    labels = torch.randint(0, 50, (200,), generator=torch.Generator().manual_seed(6))
    k = 5
    knn = knn_sampled_loss(pixels, labels, classes, k, temperature=0.1)
    rand = knn_sampled_loss(pixels, labels, classes, k, temperature=0.1, sampling="random")
    # the hardest negatives give the largest loss; compute it by hand
    sims = pixels @ classes.detach().t()
    true = sims.gather(1, labels[:, None])
    others = sims.scatter(1, labels[:, None], -math.inf).topk(k, dim=1).values
    logits = torch.cat([true, others], 1) / 0.1
    expected = F.cross_entropy(logits, torch.zeros(200, dtype=torch.long))
    assert torch.allclose(knn, expected, atol=1e-5)
    assert knn > rand
    knn.backward()
    assert classes.grad is not None and classes.grad.abs().sum() > 0


def test_ignored_pixels_do_not_count() -> None:
    classes, pixels = _unit(10, 4, 7), _unit(6, 4, 8)
    labels = torch.tensor([1, 2, 255, 3, 255, 4])
    full = knn_sampled_loss(pixels, labels, classes, 3)
    kept = knn_sampled_loss(pixels[labels != 255], labels[labels != 255], classes, 3)
    assert torch.allclose(full, kept)


def test_peak_tensor_bytes_counts_live_storage_once_per_buffer() -> None:
    def work() -> torch.Tensor:
        a = torch.zeros(250, 1000)  # 1 MB
        b = a.view(-1)  # a view: no new storage
        c = b + 1  # 1 MB while a is alive -> peak 2 MB
        del a, b
        return c * 2  # c and the result alive -> still 2 MB

    _, peak = peak_tensor_bytes(work)
    assert peak == 2 * 250 * 1000 * 4


def test_crossover_interpolates_between_class_counts() -> None:
    assert crossover([10, 100, 1000], [1.0, 2.0, 10.0], [2.0, 3.0, 5.0]) == pytest.approx(
        math.exp(math.log(100) + (math.log(1000) - math.log(100)) * 1.0 / 6.0)
    )
    assert crossover([10, 100], [1.0, 1.0], [2.0, 2.0]) is None
    assert crossover([10, 100], [1.0, math.inf], [2.0, 3.0]) == 100.0
