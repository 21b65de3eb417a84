"""bench/gpu_pipeline.py: its plan is resolve_plan's, and it runs where only torch and NumPy are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from crest.config import parse_sweep
from crest.exceptions import WorkloadError
from crest.tasks import resolve_plan
from crest.tasks._builtin import LeNet300
from crest.tasks._data import _package_file
from tests.bench._load import REPO, load_bench

# what the GPU machine lacks: importing any of these fails in the child process
BLOCKER = '''
import sys

class _Blocked:
    NAMES = {"ray", "optuna", "sqlalchemy", "pydantic", "pydantic_core", "alembic", "yaml", "typer", "psycopg"}

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.NAMES:
            raise ImportError(f"{name} is not installed on the GPU machine (blocked by the test)")
        return None

sys.meta_path.insert(0, _Blocked())
'''


@pytest.fixture(scope="module")
def bench() -> Any:
    return load_bench("gpu_pipeline")


def test_the_hand_built_plan_is_what_resolve_plan_makes(bench: Any) -> None:
    model = LeNet300()
    cfg = parse_sweep({"study": "t", "workload": "lenet300-mnist", "n_trials": 1,
                       "stages": bench.sweep_stages(epochs=2, finetune_epochs=1)})
    resolved = resolve_plan(cfg.stages, [n for n, _ in model.named_parameters()],
                            shapes={n: tuple(p.shape) for n, p in model.named_parameters()})
    built = bench.build_plan(model, epochs=2, finetune_epochs=1)
    assert built.stages == resolved.stages
    assert {p.name for p in built.params} == {p.name for p in resolved.params}
    assert built.fixed_params() == resolved.fixed_params()
    params = bench.trial_params(built, 8)
    assert len({tuple(sorted(p.items())) for p in params}) == 8


def test_staged_data_stands_in_for_a_missing_package(tmp_path: Path, bench: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    assert bench.main(["--stage-data", str(tmp_path / "data")]) == 0
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["digits.csv.gz", "mnist_5k.csv.gz"]
    with pytest.raises(WorkloadError, match="CREST_DATA_DIR"):
        _package_file("crest_no_such_package", "data", "digits.csv.gz")
    monkeypatch.setenv("CREST_DATA_DIR", str(tmp_path / "data"))
    assert _package_file("crest_no_such_package", "data", "digits.csv.gz") == tmp_path / "data" / "digits.csv.gz"


def test_the_script_runs_without_ray_optuna_a_database_or_pydantic(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    out = tmp_path / "gpu_pipeline.json"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    probe = subprocess.run([sys.executable, "-c", "import pydantic"], env=env, capture_output=True, text=True, check=False)
    assert probe.returncode != 0 and "blocked by the test" in probe.stderr
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_pipeline.py"), "--device", "cpu", "--workload", "tiny-digits",
         "--trials", "2", "--epochs", "1", "--finetune-epochs", "1", "--baseline-epochs", "1", "--repeats", "1",
         "--no-cpu", "--threads", "1", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["summary"]["passed"] and result["summary"]["devices"] == ["cpu"]
    assert result["workload"] == "tiny-digits"
    assert [t["device"] for t in result["trials"]] == ["cpu", "cpu"]
    for t in result["trials"]:
        assert t["decode_bit_exact"] and t["score_agrees"]
        assert set(t["timings"]) >= {"train", "quantize", "encode", "decode", "evaluate"}
        assert t["latency"]["compressed_b1_ms"] > 0
    assert "ImportError" not in run.stderr
