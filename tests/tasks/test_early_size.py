"""The size a trial reports before retraining, against real encodes and real trials."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crest.config import parse_sweep
from crest.tasks import (
    ScoreReport,
    SizeReport,
    TensorStructure,
    TrialRunner,
    cluster_weights,
    encode_state,
    get_workload,
    resolve_plan,
    size_bounds,
    size_point,
    structure_of,
    train_baseline,
    training_schedule,
)


def _header(blob: bytes) -> dict[str, Any]:
    (n,) = struct.unpack_from("<Q", blob, 16)
    parsed: dict[str, Any] = json.loads(blob[24 : 24 + n])
    return parsed


@st.composite
def _state(draw: st.DrawFn) -> tuple[dict[str, np.ndarray], dict[str, int], Any, int, dict[str, Any]]:
    """Random layers: shapes, densities (0 to 1, clustered or spread), quantized or not."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    bits: dict[str, int] = {}
    for i in range(draw(st.integers(1, 4))):
        shape = tuple(draw(st.lists(st.integers(1, 60), min_size=1, max_size=3)))
        w = rng.normal(size=shape).astype(np.float32)
        density = draw(st.sampled_from([0.0, 0.002, 0.05, 0.3, 0.9, 1.0]))
        mask = rng.random(shape) < density
        if draw(st.booleans()):  # long runs of zeros: gaps far beyond 2**index_bits
            mask &= (np.arange(w.size).reshape(shape) % draw(st.integers(2, 700))) == 0
        w = w * mask
        name = f"layer{i}.weight"
        if draw(st.booleans()):
            bits[name] = draw(st.integers(1, 8))
            w = cluster_weights(w, bits[name])[0]
        tensors[name] = w
        tensors[f"layer{i}.bias"] = rng.normal(size=shape[:1]).astype(np.float32)
    index_bits = draw(st.sampled_from(["auto", 1, 3, 8]))
    chunk = draw(st.sampled_from([32, 1024]))
    meta = {"workload": "w", "trial": draw(st.integers(0, 10**6)), "name": "é" * draw(st.integers(0, 3))}
    return tensors, bits, index_bits, chunk, meta


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_state())
def test_the_size_model_is_the_file_length_and_its_bounds_hold(state: Any) -> None:
    """The model gives len(blob) to the byte once the value-dependent unknowns (distinct
    counts, CRC-32 digits) are pinned, and bounds it from the zero pattern alone."""
    tensors, bits, index_bits, chunk, meta = state
    blob = encode_state(tensors, code_bits=bits, index_bits=index_bits, chunk_entries=chunk, metadata=meta)
    crcs = {e["name"]: {k: v["crc32"] for k, v in e["sections"].items()} for e in _header(blob)["tensors"]}
    pinned = []
    for name, array in tensors.items():
        s = structure_of(name, array, code_bits=bits.get(name))
        flat = array.reshape(-1)
        distinct = int(np.unique(flat[flat != 0].view(np.uint32)).size)
        pinned.append(TensorStructure(s.name, s.dtype, s.shape, s.nonzero, s.code_bits, (distinct, distinct)))
    exact = size_bounds(pinned, index_bits=index_bits, chunk_entries=chunk, metadata=meta, crcs=crcs)
    assert exact.low == exact.high == len(blob)
    structures = [structure_of(n, a, code_bits=bits.get(n)) for n, a in tensors.items()]
    bounds = size_bounds(structures, index_bits=index_bits, chunk_entries=chunk, metadata=meta)
    assert bounds.low <= len(blob) <= bounds.high


def test_bounds_are_from_the_zero_pattern_alone() -> None:
    """Any values with the same zeros and at most 2**bits - 1 distinct codes land within."""
    rng = np.random.default_rng(3)
    pattern = rng.random((120, 80)) < 0.07
    structure = [structure_of("w", pattern.astype(np.float32), code_bits=4), structure_of("b", np.ones(120, np.float32))]
    bounds = size_bounds(structure, metadata={"workload": "w"})
    sizes = set()
    for k in range(40):
        w = np.where(pattern, rng.normal(size=pattern.shape), 0).astype(np.float32)
        w = cluster_weights(w, 4)[0] if k % 4 else np.where(pattern, np.float32(1 + k % 3), 0).astype(np.float32)
        blob = encode_state({"w": w, "b": rng.normal(size=120).astype(np.float32)}, code_bits={"w": 4},
                            metadata={"workload": "w"})
        sizes.add(len(blob))
        assert bounds.holds(len(blob)), (bounds, len(blob))
    assert bounds.high in sizes  # the upper bound is a size real values give


SWEEP = {"study": "t", "workload": "tiny-digits", "n_trials": 1}


def _runner(stages: list[dict[str, Any]]) -> tuple[TrialRunner, Any]:
    wl = get_workload("tiny-digits")
    model = wl.build_model()
    named = list(model.named_parameters())
    plan = resolve_plan(parse_sweep({**SWEEP, "stages": stages}).stages, [n for n, _ in named],
                        shapes={n: tuple(p.shape) for n, p in named})
    blob, accuracy = _baseline()
    return TrialRunner(wl, plan, blob, accuracy), plan


_BASELINE: list[tuple[bytes, float]] = []


def _baseline() -> tuple[bytes, float]:
    if not _BASELINE:
        _BASELINE.append(train_baseline(get_workload("tiny-digits"), seed=0))
    return _BASELINE[0]


def _params(plan: Any, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    params = dict(plan.fixed_params())
    for spec in plan.searched():
        if spec.kind == "int":
            params[spec.name] = int(rng.integers(int(spec.low), int(spec.high) + 1))
        else:
            params[spec.name] = float(rng.uniform(spec.low, spec.high))
    return params


def _drain(gen: Any) -> tuple[list[Any], Any]:
    reports = []
    while True:
        try:
            reports.append(next(gen))
        except StopIteration as done:
            return reports, done.value


PIPELINES = {
    "prune-retrain-quantize": [
        {"type": "prune", "layers": {"*.weight": {"quality": [0.2, 1.5]}}},
        {"type": "retrain", "epochs": [1, 2]},
        {"type": "quantize", "layers": {"*.weight": {"bits": [1, 6]}}, "finetune_epochs": 1},
    ],
    "iterative": [
        {"type": "prune", "layers": {"*.weight": {"sparsity": [0.5, 0.95]}}},
        {"type": "retrain", "epochs": 1, "rounds": [2, 3]},
        {"type": "quantize", "layers": {"fc1.weight": {"bits": [2, 5]}}},
    ],
    "dsd-then-prune": [
        {"type": "prune", "layers": {"*.weight": {"quality": [0.2, 1.0]}}},
        {"type": "retrain", "epochs": 1, "dsd": True},
        {"type": "prune", "layers": {"fc2.weight": {"sparsity": [0.3, 0.8]}}},
        {"type": "retrain", "epochs": 1},
    ],
    "lowrank-prune-only": [
        {"type": "lowrank", "layers": {"fc1.weight": {"rank": [4, 12]}}},
        {"type": "prune", "layers": {"fc1.*.weight": {"sparsity": [0.2, 0.6]}}},
        {"type": "retrain", "epochs": 1},
    ],
    "quantize-only": [{"type": "quantize", "layers": {"*.weight": {"bits": [2, 4]}}}],
}


@pytest.mark.parametrize("name", list(PIPELINES))
def test_a_trial_step_by_step_is_the_trial_and_reports_its_size_before_the_training_that_follows(name: str) -> None:
    runner, plan = _runner(PIPELINES[name])
    for seed in range(3):
        params = _params(plan, seed)
        whole = runner.run(params, seed=seed, metadata={"trial": seed})
        reports, stepped = _drain(runner.steps(params, seed=seed, metadata={"trial": seed}, sizes=True, scores=True))
        assert stepped.blob == whole.blob and stepped.accuracy == whole.accuracy  # stepping changes nothing
        sizes = [r for r in reports if isinstance(r, SizeReport)]
        scores = [r for r in reports if isinstance(r, ScoreReport)]
        schedule = training_schedule(plan, params)
        assert len(sizes) == 1 and [s.step for s in scores] == list(range(1, len(schedule) + 1))
        size = sizes[0]
        assert size.low <= len(stepped.blob) <= size.high and stepped.size_bounds == (size.low, size.high)
        assert size.steps == len(schedule)
        # the report comes before every epoch that trains after the masks are final
        assert size.step == _epochs_before_size_point(plan, params, schedule), (name, params, size, schedule)
        assert reports.index(size) == size.step
        assert all(0.0 <= s.score <= 1.0 for s in scores)


def _epochs_before_size_point(plan: Any, params: dict[str, Any], schedule: list[Any]) -> int:
    stage, inside = size_point(plan, params)
    index = {s.label: i for i, s in enumerate(plan.stages)}
    count = 0
    for label, round_, rounds, _ in schedule:
        i = index[label]
        if i < stage or (i == stage and (not inside or 0 < round_ < rounds)):
            count += 1
    return count


def test_an_iterative_trial_reports_its_size_before_its_last_round() -> None:
    runner, plan = _runner(PIPELINES["iterative"])
    params = {**_params(plan, 0), "retrain/rounds": 3}
    reports, _ = _drain(runner.steps(params, seed=0, sizes=True, scores=True))
    size = next(r for r in reports if isinstance(r, SizeReport))
    assert size.step == 2 and size.steps == 3  # rounds 1 and 2 trained, round 3 to go


def test_without_reports_a_step_by_step_trial_yields_nothing() -> None:
    runner, plan = _runner(PIPELINES["prune-retrain-quantize"])
    reports, outcome = _drain(runner.steps(_params(plan, 1), seed=1))
    assert reports == [] and outcome.size_bounds is None
