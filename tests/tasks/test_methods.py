"""Pruning, weight sharing, encoding plans and masked retraining on real small models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crest import gpu
from crest.tasks import (
    evaluate,
    get_workload,
    kmeans_1d,
    magnitude_mask,
    plan_tensor,
    share_weights,
    sparsity_mask,
    train,
)


def test_magnitude_mask_uses_quality_times_std() -> None:
    w = torch.randn(200, 100, generator=torch.Generator().manual_seed(0))
    mask = magnitude_mask(w, 1.0)
    threshold = float(w.std())
    assert torch.equal(mask, w.abs() > threshold)
    # about 32% of a Gaussian lies beyond one std
    assert 0.28 < mask.float().mean().item() < 0.36
    assert bool(magnitude_mask(w, 0.0).all())


def test_sparsity_mask_hits_the_target() -> None:
    w = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    for target in (0.0, 0.5, 0.9, 0.99):
        kept = sparsity_mask(w, target).float().mean().item()
        assert abs((1 - kept) - target) < 0.002


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8])
def test_weight_sharing_leaves_at_most_2_pow_bits_minus_1_values(bits: int) -> None:
    rng = np.random.default_rng(bits)
    w = rng.normal(size=(64, 64)).astype(np.float32)
    w[rng.random(w.shape) < 0.7] = 0
    q = share_weights(w, bits)
    assert q.dtype == np.float32
    assert np.array_equal(q == 0, w == 0), "zeros stay zeros and no new zeros appear"
    assert len(np.unique(q[q != 0])) <= 2**bits - 1
    # the encoder then stores it sparse at exactly `bits` bits per code
    blob = gpu.encode({"w": q}, code_bits=bits, index_bits=4)
    assert gpu.inspect(blob)["tensors"][0]["encoding"] == "sparse"
    assert np.array_equal(gpu.decode(blob)["w"], q)


def test_kmeans_error_falls_with_more_clusters() -> None:
    x = np.random.default_rng(0).normal(size=5000)
    errors = []
    for k in (1, 3, 7, 15, 31):
        c, labels = kmeans_1d(x, k)
        assert len(c) <= k and np.all(np.diff(c) > 0)
        errors.append(float(np.mean((x - c[labels]) ** 2)))
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 0.01 * errors[0]


def test_kmeans_linear_init_is_deterministic_and_handles_edge_cases() -> None:
    x = np.random.default_rng(5).uniform(-1, 1, size=999)
    assert np.array_equal(kmeans_1d(x, 7)[0], kmeans_1d(x, 7)[0])
    c, labels = kmeans_1d(np.array([0.5, 0.5, 0.5]), 4)
    assert list(c) == [0.5] and list(labels) == [0, 0, 0]
    c, labels = kmeans_1d(np.array([]), 3)
    assert c.size == 0 and labels.size == 0


def test_encoding_plan_is_exact_and_never_worse_than_dense() -> None:
    rng = np.random.default_rng(2)
    dense = rng.normal(size=(50, 40)).astype(np.float32)
    plan = plan_tensor(dense)
    assert plan.encoding == "dense" and plan.est_bytes == dense.nbytes
    sparse = share_weights(np.where(rng.random((300, 200)) < 0.08, dense.mean() + rng.normal(size=(300, 200)), 0), 4)
    plan = plan_tensor(sparse, code_bits=4)
    assert plan.encoding == "sparse" and plan.code_bits == 4
    assert plan.est_bytes < sparse.nbytes / 10
    blob = gpu.encode({"w": sparse}, overrides={"w": {"index_bits": plan.index_bits, "code_bits": 4}})
    # the estimate is the payload; the file adds a header
    assert plan.est_bytes <= len(blob) <= plan.est_bytes + 1024
    # auto index bits is at least as small as any fixed width
    for ib in (1, 2, 4, 8, 16):
        assert plan.est_bytes <= plan_tensor(sparse, code_bits=4, index_bits=ib).est_bytes


def test_masked_retraining_keeps_pruned_weights_zero_and_recovers_accuracy() -> None:
    torch.set_num_threads(1)
    wl = get_workload("tiny-digits")
    torch.manual_seed(0)
    model = wl.build_model()
    train(model, wl, epochs=6, lr=wl.lr, seed=0)
    base = evaluate(model, wl)
    assert base > 0.85
    masks = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight"):
                masks[name] = magnitude_mask(p, 1.2)
                p.mul_(masks[name])
    pruned = evaluate(model, wl)
    train(model, wl, epochs=3, lr=wl.lr, seed=1, masks=masks)
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert bool((params[name][~mask] == 0).all()), f"{name}: a pruned weight moved"
        assert bool((params[name][mask] != 0).any())
    assert evaluate(model, wl) >= pruned
    assert evaluate(model, wl) > base - 0.1


def test_sensitivity_range_reads_the_table() -> None:
    from crest.tasks import sensitivity_range

    table = [(0.5, 0.0), (0.8, 0.004), (0.9, 0.02), (0.95, 0.06), (0.99, 0.4)]
    assert sensitivity_range(table, low_drop=0.005, high_drop=0.05) == (0.8, 0.9)
    assert sensitivity_range(table, low_drop=0.0, high_drop=1.0) == (0.5, 0.99)
    assert sensitivity_range([(0.5, 0.2)], low_drop=0.01, high_drop=0.05) == (0.0, 0.0)


def test_layer_sensitivity_falls_with_sparsity() -> None:
    from crest.tasks import layer_sensitivity, state_to_numpy

    torch.set_num_threads(1)
    wl = get_workload("tiny-digits")
    torch.manual_seed(0)
    model = wl.build_model()
    train(model, wl, epochs=4, lr=wl.lr, seed=0)
    scores = layer_sensitivity(wl, state_to_numpy(model), "fc1.weight", [0.0, 0.5, 0.99])
    assert scores[0] == evaluate(model, wl)
    assert scores[2] < scores[0]
