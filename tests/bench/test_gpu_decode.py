"""The parts of bench/gpu_decode.py that need no GPU: ratios, budget judgement, the spin
kernel's source (compiled by NVRTC as CuPy will), and the refusal without a device."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from crest.gpu import gpu_unavailable_reason
from tests.bench._load import REPO, load_bench
from tests.gpu._nvrtc import needs_nvrtc, nvrtc_compile


@pytest.fixture(scope="module")
def bench() -> Any:
    return load_bench("gpu_decode")


def _rows(bench: Any, call: float, device: float | None, saturated: bool = True) -> dict[str, dict[str, Any]]:
    keys = {k for num, den in bench.RATIOS.values() for k in (*num, *den)}
    rows: dict[str, dict[str, Any]] = {}
    for k in keys:
        rows[k] = {"median_ms": call}
        if device is not None:
            rows[k].update(device_median_ms=device, device_saturated=saturated)
    return rows


def test_ratios_take_the_fastest_of_several_floor_rows(bench: Any) -> None:
    rows = _rows(bench, 1.0, 0.5)
    rows["fc6: crest decode fp32"].update(median_ms=0.06, device_median_ms=0.055)
    rows["fc6: fill floor: cudaMemset fp32 output"].update(median_ms=0.05, device_median_ms=0.044)
    rows["fc6: fill floor: torch fill_ fp32 output"].update(median_ms=0.04, device_median_ms=0.05)
    assert bench.compute_ratios(rows)["decode_fp32_over_fill_floor"] == pytest.approx(0.06 / 0.04)
    assert bench.compute_ratios(rows, "device_median_ms")["decode_fp32_over_fill_floor"] == pytest.approx(0.055 / 0.044)


def test_budgets_are_judged_on_device_time_and_both_directions(bench: Any) -> None:
    rows = _rows(bench, 1.0, 1.0)
    # call time dominated by host overhead; device time says the fused kernel is 4x faster
    rows["fc6: crest fused y=Wx batch 1"].update(median_ms=0.03, device_median_ms=0.015)
    rows["fc6: cuSPARSE SpMV (torch CSR @ x) batch 1"].update(median_ms=0.06, device_median_ms=0.06)
    rows["fc6: crest decode fp32"].update(device_median_ms=0.07)
    rows["fc6: fill floor: cudaMemset fp32 output"].update(device_median_ms=0.05)
    rows["fc6: fill floor: torch fill_ fp32 output"].update(device_median_ms=0.06)
    got = bench.judge_budgets(rows)
    spmv = got["fused batch 1 >=3x faster than cuSPARSE SpMV"]
    assert spmv["basis"] == "device" and spmv["value"] == pytest.approx(4.0) and spmv["met"]
    floor = got["decode within 1.3x of the fill floor"]
    assert floor["value"] == pytest.approx(1.4) and not floor["met"]  # a "max" budget
    assert all(b["unsaturated"] == [] for b in got.values())


def test_budgets_fall_back_to_call_time_and_name_unsaturated_rows(bench: Any) -> None:
    rows = _rows(bench, 1.0, None)
    assert all(b["basis"] == "call" for b in bench.judge_budgets(rows).values())
    rows = _rows(bench, 1.0, 1.0, saturated=False)
    judged = bench.judge_budgets(rows)[">=10x faster than torch CSR to_dense"]
    assert judged["basis"] == "device"
    assert sorted(judged["unsaturated"]) == ["fc6: crest decode fp32", "fc6: torch CSR to_dense() fp32"]


def test_an_upper_bound_that_flatters_crest_leaves_the_budget_undetermined(bench: Any) -> None:
    rows = _rows(bench, 1.0, 1.0)
    spmv, fused = "fc6: cuSPARSE SpMV (torch CSR @ x) batch 1", "fc6: crest fused y=Wx batch 1"
    rows[spmv].update(device_median_ms=0.1, device_saturated=False)  # maybe inflated by gaps
    rows[fused].update(device_median_ms=0.02)
    assert bench.judge_budgets(rows)["fused batch 1 >=3x faster than cuSPARSE SpMV"]["met"] is None
    rows[spmv].update(device_saturated=True)
    rows[fused].update(device_saturated=False)  # crest's own bound only makes it stricter
    assert bench.judge_budgets(rows)["fused batch 1 >=3x faster than cuSPARSE SpMV"]["met"] is True
    floor = "fc6: fill floor: torch fill_ fp32 output"
    rows[floor].update(device_saturated=False)  # the floor is the flattering side of a max
    assert bench.judge_budgets(rows)["decode within 1.3x of the fill floor"]["met"] is None


@needs_nvrtc
def test_spin_kernel_compiles_with_nvrtc(bench: Any) -> None:
    rc, log, cubin = nvrtc_compile(bench.SPIN_SOURCE, ["-arch=sm_90", "--device-as-default-execution-space"])
    assert rc == 0, log
    assert b"crest_bench_spin\x00" in cubin


def test_refuses_without_a_device_and_measures_nothing(tmp_path: Path) -> None:
    if gpu_unavailable_reason() is None:
        pytest.skip("a CUDA device is present: the benchmark would run")
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_decode.py"), "--out", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "needs a CUDA device" in proc.stderr and not out.exists()
