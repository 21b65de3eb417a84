"""Retraining options on real small training runs: rounds, DSD, distillation, centroid fine-tuning."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from crest.config import parse_sweep
from crest.tasks import (
    TrialOutcome,
    TrialRunner,
    Workload,
    cluster_weights,
    finetune_centroids,
    get_workload,
    prune_schedule,
    resolve_plan,
    train,
    train_baseline,
)
from crest.tasks._train import batches


@pytest.fixture(scope="module")
def tiny() -> tuple[Workload, bytes, float]:
    torch.set_num_threads(2)
    wl = get_workload("tiny-digits")
    blob, acc = train_baseline(wl, seed=0)
    return wl, blob, acc


def _run(tiny: tuple[Workload, bytes, float], stages: list[dict[str, Any]], seed: int = 0) -> tuple[TrialRunner, TrialOutcome]:
    wl, blob, acc = tiny
    model = wl.build_model()
    names = [n for n, _ in model.named_parameters()]
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    cfg = parse_sweep({"study": "t", "workload": "tiny-digits", "n_trials": 1, "stages": stages})
    plan = resolve_plan(cfg.stages, names, shapes=shapes)
    runner = TrialRunner(wl, plan, blob, acc)
    return runner, runner.run(plan.fixed_params(), seed=seed)


def _weights(out: TrialOutcome) -> dict[str, np.ndarray]:
    from crest import gpu

    return {k: v for k, v in gpu.decode(out.blob).items() if k.endswith("weight")}


PRUNE = {"type": "prune", "layers": {"*.weight": {"sparsity": 0.8}}}


def test_prune_schedule_reaches_the_target() -> None:
    for kind in ("cubic", "linear"):
        fracs = [prune_schedule(r, 4, kind) for r in range(1, 5)]
        assert fracs == sorted(fracs) and fracs[-1] == 1.0 and fracs[0] > 0
    assert prune_schedule(1, 4, "cubic") > prune_schedule(1, 4, "linear")


def test_rounds_reach_the_sparsity_and_keep_pruned_weights_zero(tiny: tuple[Workload, bytes, float]) -> None:
    wl = tiny[0]
    # in-loop check: every round's retraining holds that round's mask
    model = wl.build_model()
    torch.manual_seed(0)
    masks = {"fc1.weight": torch.rand(32, 64) > 0.7}
    train(model, wl, epochs=1, lr=wl.lr, seed=0, masks=masks)
    assert bool((model.fc1.weight[~masks["fc1.weight"]] == 0).all())
    _, out = _run(tiny, [PRUNE, {"type": "retrain", "epochs": 1, "rounds": 3}])
    for name, w in _weights(out).items():
        assert abs(float((w == 0).mean()) - 0.8) < 0.01, name
    # one round of the same total is a different (one-shot) result
    _, one_shot = _run(tiny, [PRUNE, {"type": "retrain", "epochs": 3}])
    masks_iter = {k: v != 0 for k, v in _weights(out).items()}
    masks_one = {k: v != 0 for k, v in _weights(one_shot).items()}
    assert any(not np.array_equal(masks_iter[k], masks_one[k]) for k in masks_iter)
    assert out.accuracy > 0.6


def test_dsd_dense_phase_regrows_and_changes_the_mask(tiny: tuple[Workload, bytes, float]) -> None:
    _, sparse = _run(tiny, [PRUNE, {"type": "retrain", "epochs": 2}])
    _, dsd = _run(tiny, [PRUNE, {"type": "retrain", "epochs": 2, "dsd": True, "dsd_epochs": 2}])
    changed = []
    for name, w in _weights(dsd).items():
        before = _weights(sparse)[name] != 0
        after = w != 0
        # same count (re-pruned to the sparse phase's sparsity), other places
        assert abs(int(after.sum()) - int(before.sum())) <= 1
        changed.append(int((after & ~before).sum()))
    assert sum(changed) > 0, "the dense phase regrew no weight past the kept ones"
    # with a later prune stage the dense result goes on to it
    _, repruned = _run(
        tiny,
        [PRUNE, {"type": "retrain", "epochs": 1, "dsd": True}, {"type": "prune", "layers": {"*.weight": {"sparsity": 0.6}}}],
    )
    for w in _weights(repruned).values():
        assert abs(float((w == 0).mean()) - 0.6) < 0.01


def test_distillation_runs_and_changes_the_result(tiny: tuple[Workload, bytes, float]) -> None:
    _, plain = _run(tiny, [PRUNE, {"type": "retrain", "epochs": 2}])
    runner, kd = _run(tiny, [PRUNE, {"type": "retrain", "epochs": 2, "distill": {"weight": 0.7, "temperature": 3}}])
    assert runner._teacher is not None
    differs = [not np.array_equal(a, b) for a, b in zip(_weights(plain).values(), _weights(kd).values())]
    assert any(differs)
    assert kd.accuracy > 0.6


def _loss(model: nn.Module, wl: Workload) -> float:
    total, n = 0.0, 0
    with torch.no_grad():
        for xb, yb in batches(wl.train_set, 256, shuffle=False):
            total += float(nn.functional.cross_entropy(model(xb), yb, reduction="sum"))
            n += len(yb)
    return total / n


def test_centroid_finetuning_keeps_values_shared_and_zeros_zero_and_lowers_loss(tiny: tuple[Workload, bytes, float]) -> None:
    wl = tiny[0]
    torch.manual_seed(0)
    model = wl.build_model()
    train(model, wl, epochs=4, lr=wl.lr, seed=0)
    codebooks = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight"):
                w = p.numpy().copy()
                w[np.abs(w) < np.quantile(np.abs(w), 0.6)] = 0
                shared, labels, codebook = cluster_weights(w, 2)
                p.copy_(torch.from_numpy(shared))
                codebooks[name] = (labels, codebook)
    before = _loss(model, wl)
    final = finetune_centroids(model, wl, codebooks, epochs=3, lr=wl.lr, seed=0)
    after = _loss(model, wl)
    assert after < before
    params = dict(model.named_parameters())
    for name, (labels, codebook) in codebooks.items():
        w = params[name].detach().numpy()
        assert np.array_equal(w == 0, labels == 0), "zeros stay zero, no new zeros"
        assert len(np.unique(w[w != 0])) <= 3
        assert np.array_equal(w, final[name][labels]), "every weight is its cluster's shared value"
        assert not np.array_equal(final[name], codebook), "the shared values moved"


def test_quantize_finetune_in_the_pipeline_keeps_the_code_width(tiny: tuple[Workload, bytes, float]) -> None:
    stages = [PRUNE, {"type": "retrain", "epochs": 1}, {"type": "quantize", "layers": {"*.weight": {"bits": 2}}}]
    _, plain = _run(tiny, stages)
    _, tuned = _run(tiny, stages[:2] + [{**stages[2], "finetune_epochs": 2}])
    for name, w in _weights(tuned).items():
        assert len(np.unique(w[w != 0])) <= 3
        assert np.array_equal(w != 0, _weights(plain)[name] != 0)
        assert tuned.layers[name]["bits"] == 2
    assert tuned.accuracy >= plain.accuracy - 0.02
