#!/usr/bin/env bash
# The one script to run on a GPU machine: tests/format and tests/gpu (the format, then the
# CPU, emulator and GPU tests of the decoder), then the GPU benchmark. Writes $OUT/gpu_env.log, $OUT/gpu_tests.log, $OUT/gpu_bench.log
# and $OUT/gpu_decode.json ($OUT defaults to bench/results). Installs nothing and needs no
# network; about 3-5 minutes on an H100. The benchmark runs even when a test fails; the
# script exits non-zero when either did.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$REPO/bench/results}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$OUT"
cd "$REPO" || exit 2
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1

{
  echo "== $(date -u +%FT%TZ) $(hostname)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not available"
  "$PYTHON" - <<'PY'
import sys
print("python", sys.version.split()[0])
for name in ("numpy", "cupy", "torch", "hypothesis", "pytest"):
    try:
        module = __import__(name)
        print(name, getattr(module, "__version__", "?"))
    except Exception as exc:  # report, do not fail: the tests say what is missing
        print(name, "unavailable:", type(exc).__name__, exc)
PY
} 2>&1 | tee "$OUT/gpu_env.log"

timeout 270 "$PYTHON" -m pytest tests/format tests/gpu -q -p no:cacheprovider -rs 2>&1 | tee "$OUT/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}
timeout 300 "$PYTHON" bench/gpu_decode.py --out "$OUT/gpu_decode.json" 2>&1 | tee "$OUT/gpu_bench.log"
bench_rc=${PIPESTATUS[0]}
echo "== gpu tests rc=$tests_rc, gpu benchmark rc=$bench_rc" | tee -a "$OUT/gpu_env.log"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
