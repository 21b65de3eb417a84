"""crest.tasks loads each name where it is defined, when first used: the driver reads its
plain-data names without importing torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import crest.tasks


def test_every_public_name_resolves_from_the_table_that_exports_it() -> None:
    assert sorted(crest.tasks.__all__) == sorted(crest.tasks._WHERE)
    for name in crest.tasks.__all__:
        value = getattr(crest.tasks, name)
        assert value is getattr(__import__(crest.tasks._WHERE[name], fromlist=[name]), name)


def test_the_names_the_driver_reads_import_no_torch() -> None:
    code = textwrap.dedent(
        """
        import sys
        from crest.tasks import (
            LatencyOptions, ScoreReport, SizeReport, StepKey, TrialOutcome, TrialPlan, resolve_plan,
            training_schedule,
        )
        from crest.tasks._latency_options import LATENCY_OBJECTIVE
        from crest.tasks._model_summary import ModelSummary
        import crest.orchestrator._driver, crest.orchestrator._worker, crest.orchestrator._baseline
        print("torch" in sys.modules)
        """
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "False"


def test_an_unknown_name_is_an_attribute_error() -> None:
    try:
        crest.tasks.no_such_name  # noqa: B018
    except AttributeError as e:
        assert "no_such_name" in str(e)
    else:
        raise AssertionError("an unknown name resolved")
