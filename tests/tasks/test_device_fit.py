"""Device placement, a workload's own fit, GPU-or-NumPy scoring and latency, on real small runs."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from crest import gpu
from crest.config import parse_sweep
from crest.exceptions import ConfigError, GpuUnavailableError, WorkloadError
from crest.tasks import (
    FitContext,
    TrialOutcome,
    TrialRunner,
    Workload,
    evaluate,
    get_workload,
    resolve_plan,
)
from crest.tasks._device import resolve_device
from crest.tasks._fit import FIT_WARNING, run_fit
from crest.tasks._latency import LatencyOptions
from crest.tasks._pipeline import decoded_model, train_baseline
from crest.tasks._train import batches

PRUNE_RETRAIN_QUANTIZE = [
    {"type": "prune", "layers": {"*.weight": {"sparsity": 0.8}}},
    {"type": "retrain", "epochs": 2},
    {"type": "quantize", "layers": {"*.weight": {"bits": 3}}, "finetune_epochs": 1},
]


def _plan(wl: Workload, stages: list[dict[str, Any]]):  # type: ignore[no-untyped-def]
    model = wl.build_model()
    cfg = parse_sweep({"study": "t", "workload": "tiny-digits", "n_trials": 1, "stages": stages})
    return resolve_plan(cfg.stages, [n for n, _ in model.named_parameters()],
                        shapes={n: tuple(p.shape) for n, p in model.named_parameters()})


def _sgd_cosine_fit(calls: list[str], *, step_hook: bool = True):  # type: ignore[no-untyped-def]
    """A user's own recipe: SGD with momentum, a cosine schedule, its own DataLoader."""

    def fit(model: torch.nn.Module, ctx: FitContext) -> None:
        calls.append(ctx.stage)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, ctx.epochs))
        loader = ctx.workload.train_set()  # the factory: a DataLoader of our own
        for _ in range(ctx.epochs):
            for xb, yb in loader:
                opt.zero_grad()
                ctx.loss(model, xb.to(ctx.device), yb.to(ctx.device)).backward()
                opt.step()
                if step_hook:
                    ctx.after_step()
            sched.step()

    return fit


def _own_workload(calls: list[str], *, step_hook: bool = True) -> Workload:
    base = get_workload("tiny-digits")
    train_ds, test_ds = base.train_set, base.test_set
    return replace(
        base,
        train_set=lambda: DataLoader(train_ds, batch_size=64, shuffle=True),  # type: ignore[arg-type]
        test_set=lambda: DataLoader(test_ds, batch_size=200),  # type: ignore[arg-type]
        fit=_sgd_cosine_fit(calls, step_hook=step_hook),
    )


def _check_constraints(out: TrialOutcome, bits: int = 3, sparsity: float = 0.8) -> None:
    for name, values in gpu.decode(out.blob).items():
        if not name.endswith("weight"):
            continue
        zeros = int((values == 0).sum())
        assert zeros >= round(sparsity * values.size), f"{name} lost pruned zeros"
        assert len(np.unique(values[values != 0])) <= 2**bits - 1, f"{name} has too many shared values"


@pytest.fixture(scope="module")
def own() -> tuple[Workload, list[str], bytes, float]:
    torch.manual_seed(0)
    calls: list[str] = []
    wl = _own_workload(calls)
    blob, acc = train_baseline(wl, seed=0, device="cpu")
    return wl, calls, blob, acc


def test_a_fit_with_its_own_sgd_and_cosine_schedule_keeps_zeros_and_shared_values(own: Any) -> None:
    wl, calls, blob, acc = own
    assert calls == ["baseline"] and acc > 0.8
    runner = TrialRunner(wl, _plan(wl, PRUNE_RETRAIN_QUANTIZE), blob, acc, device="cpu")
    out = runner.run(runner.plan.fixed_params(), seed=0)
    assert calls == ["baseline", "retrain", "finetune"]
    _check_constraints(out)
    assert out.device == "cpu" and "fit_warning" not in out.details
    assert out.accuracy > 0.5
    timings = out.details["timings"]
    assert set(timings) == {"prune", "train", "quantize", "encode", "decode", "evaluate"}
    assert all(v >= 0 for v in timings.values()) and out.details["peak_rss_bytes"] > 0
    assert "gpu_peak_bytes" not in out.details


def test_a_fit_that_never_calls_after_step_is_warned_and_still_projected(own: Any) -> None:
    _, _, blob, acc = own
    calls: list[str] = []
    wl = _own_workload(calls, step_hook=False)
    runner = TrialRunner(wl, _plan(wl, PRUNE_RETRAIN_QUANTIZE), blob, acc)
    out = runner.run(runner.plan.fixed_params(), seed=1)
    assert out.details["fit_warning"] == FIT_WARNING
    _check_constraints(out)  # crest re-applied masks and sharing when fit returned


def test_a_user_fit_reports_one_score_per_call_in_step_by_step_runs(own: Any) -> None:
    wl, _, blob, acc = own
    stages = [{"type": "prune", "layers": {"*.weight": {"sparsity": 0.5}}}, {"type": "retrain", "epochs": 3, "rounds": 2}]
    runner = TrialRunner(wl, _plan(wl, stages), blob, acc)
    steps = runner.steps(runner.plan.fixed_params(), seed=0, sizes=True, scores=True)
    reports = []
    while True:
        try:
            reports.append(next(steps))
        except StopIteration:
            break
    scores = [r for r in reports if hasattr(r, "score")]
    # one report per fit call (two rounds), at the last epoch of each: the schedule's keys 3 and 6
    assert [r.step for r in scores] == [3, 6] and all(r.steps == 6 for r in scores)


def test_a_failing_fit_is_a_workload_error(own: Any) -> None:
    wl, _, _, _ = own

    def broken(model: torch.nn.Module, ctx: FitContext) -> None:
        raise RuntimeError("out of patience")

    bad = replace(wl, fit=broken)
    ctx = FitContext(epochs=1, lr=0.1, device=torch.device("cpu"), seed=0, stage="retrain", workload=bad)
    with pytest.raises(WorkloadError, match="out of patience"):
        run_fit(bad.build_model(), ctx)


def test_after_step_holds_masks_and_shares_values_on_any_device() -> None:
    lin = torch.nn.Linear(6, 4, bias=False)
    wl = get_workload("tiny-digits")
    mask = torch.rand(4, 6, generator=torch.Generator().manual_seed(0)) > 0.5
    labels = torch.tensor([0, 1, 2, 1, 2, 0] * 4, dtype=torch.int64)
    ctx = FitContext(epochs=1, lr=0.1, device=torch.device("cpu"), seed=0, stage="finetune", workload=wl,
                     masks={}, shared={"weight": labels})
    ctx.bind(lin)
    ctx.after_step()
    w = lin.weight.detach().reshape(-1)
    assert ctx.steps == 1
    assert torch.all(w[labels == 0] == 0)
    for k in (1, 2):
        assert torch.unique(w[labels == k]).numel() == 1
    ctx2 = FitContext(epochs=1, lr=0.1, device=torch.device("cpu"), seed=0, stage="retrain", workload=wl,
                      masks={"weight": mask})
    ctx2.bind(lin).after_step()
    assert torch.all(lin.weight.detach()[~mask] == 0)


def test_data_factories_are_called_per_pass_and_batches_land_on_the_device() -> None:
    wl = get_workload("tiny-digits")
    made: list[int] = []

    def factory() -> DataLoader:  # type: ignore[type-arg]
        made.append(1)
        return DataLoader(wl.test_set, batch_size=100)  # type: ignore[arg-type]

    own = replace(wl, test_set=factory)
    model = wl.build_model()
    assert evaluate(model, own) == evaluate(model, wl)
    assert len(made) == 1
    xb, yb = next(batches(factory, 7, shuffle=True, device=torch.device("cpu")))
    assert xb.shape == (100, 64) and yb.device.type == "cpu"
    with pytest.raises(WorkloadError, match="not a DataLoader"):
        next(batches(lambda: 3, 7, shuffle=False))  # type: ignore[arg-type,return-value]


@pytest.fixture(scope="module")
def builtin() -> tuple[Workload, bytes, float]:
    wl = get_workload("tiny-digits")
    return (wl, *train_baseline(wl, seed=0))


def test_compressed_modules_and_the_numpy_decode_give_the_same_score(builtin: Any) -> None:
    wl, blob, acc = builtin
    stages = [{"type": "lowrank", "layers": {"fc1.weight": {"rank": 12}}}, *PRUNE_RETRAIN_QUANTIZE[:1],
              PRUNE_RETRAIN_QUANTIZE[2]]
    runner = TrialRunner(wl, _plan(wl, stages), blob, acc, latency=LatencyOptions(warmup=1, repeats=2))
    out = runner.run(runner.plan.fixed_params(), seed=0)
    structure = gpu.read_header(out.blob).metadata.get("lowrank")
    numpy_path = decoded_model(wl, out.blob, torch.device("cpu"), structure=structure)
    compressed = wl.build_model()
    from crest.tasks import apply_structure

    apply_structure(compressed, structure)
    gpu.load_model(out.blob, compressed)
    assert any(isinstance(m, gpu.CompressedLinear) for m in compressed.modules())
    assert evaluate(compressed, wl) == pytest.approx(evaluate(numpy_path, wl), abs=1e-6) == pytest.approx(out.accuracy)
    x = torch.randn(16, 64)
    with torch.no_grad():
        assert torch.allclose(compressed(x), numpy_path(x), atol=1e-5)
    lat = out.details["latency"]
    assert lat["batch_size"] == wl.batch_size and lat["repeats"] == 2 and lat["compressed_layers"] >= 1
    for key in ("dense_b1_ms", "dense_batch_ms", "compressed_b1_ms", "compressed_batch_ms"):
        assert math.isfinite(lat[key]) and lat[key] > 0


@pytest.mark.gpu
def test_the_gpu_decode_scores_as_the_numpy_decode(builtin: Any) -> None:
    if not torch.cuda.is_available() or gpu.gpu_unavailable_reason() is not None:
        pytest.skip(f"needs a CUDA device and CuPy: {gpu.gpu_unavailable_reason() or 'torch sees no CUDA'}")
    wl, blob, acc = builtin
    runner = TrialRunner(wl, _plan(wl, PRUNE_RETRAIN_QUANTIZE), blob, acc, device="cuda",
                         latency=LatencyOptions(warmup=1, repeats=2))
    out = runner.run(runner.plan.fixed_params(), seed=0)
    assert out.device.startswith("cuda") and out.details["gpu_peak_bytes"] > 0
    on_cpu = evaluate(decoded_model(wl, out.blob, torch.device("cpu")), wl)
    assert out.accuracy == pytest.approx(on_cpu, abs=2e-3)


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be one of"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(GpuUnavailableError, match="no CUDA device"):
            resolve_device("cuda")


def test_sweep_file_device_latency_and_fractional_gpus() -> None:
    base = {"study": "t", "workload": "tiny-digits", "n_trials": 1, "stages": PRUNE_RETRAIN_QUANTIZE}
    cfg = parse_sweep(base)
    assert cfg.device == "auto" and cfg.latency.enabled and cfg.latency.repeats == 5
    cfg = parse_sweep({**base, "device": "cuda", "ray": {"gpus_per_worker": 0.25}, "latency": False,
                       "objectives": ["size", "accuracy"]})
    assert cfg.ray.gpus_per_worker == 0.25 and not cfg.latency.enabled
    assert cfg.search_identity() == parse_sweep({**base, "objectives": ["size", "accuracy"]}).search_identity()
    cfg = parse_sweep({**base, "objectives": ["size", "latency"]})
    from crest.orchestrator._space import directions, objective_values

    assert directions(cfg) == ["minimize", "minimize"]
    assert objective_values(cfg, 100, 0.9, {"latency": {"compressed_b1_ms": 0.25}}) == [100.0, 0.25]
    assert objective_values(cfg, 100, 0.9, {"latency": {"error": "x"}}) == [100.0, math.inf]
    for bad, field in (({"device": "cuda"}, "gpus_per_worker > 0"),
                       ({"ray": {"gpus_per_worker": 1.5}}, "whole number"),
                       ({"objectives": ["size", "latency"], "latency": {"enabled": False}}, "latency measured"),
                       ({"objectives": ["size", "latency"], "early_stopping": {}}, "size_dominated"),
                       ({"device": "tpu"}, "device")):
        with pytest.raises(ConfigError, match=field):
            parse_sweep({**base, **bad})
