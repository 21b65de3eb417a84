from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from crest.config import load_sweep, parse_sweep
from crest.exceptions import ConfigError

from .helpers import TINY_SWEEP

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid(path: Path) -> None:
    config, text = load_sweep(path)
    assert config.study
    assert text == path.read_text()


def test_every_builtin_workload_has_an_example() -> None:
    from crest.tasks import builtin_workloads

    names = {p.stem for p in EXAMPLES}
    assert set(builtin_workloads()) <= names


def _bad(**changes: object) -> dict[str, object]:
    data = dict(TINY_SWEEP)
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        (_bad(n_trials=0), "n_trials", "greater than or equal to 1"),
        (_bad(n_trials="many"), "n_trials", "valid integer"),
        (_bad(colour="red"), "colour", "unknown key"),
        (_bad(workers=-1), "workers", "greater than or equal"),
        (_bad(study="has space"), "study", "letters"),
        (_bad(stages=[]), "stages", "at least 1"),
        (_bad(stages=[{"type": "prnue"}]), "stages[0]", "prnue"),
        (_bad(stages=[{"type": "prune", "layers": {"*": {"quality": [2, 1]}}}]), "stages[0].layers.*.quality", "must not exceed"),
        (_bad(stages=[{"type": "prune", "layers": {"*": {"qualty": 1}}}]), "stages[0].layers.*.qualty", "unknown key"),
        (_bad(stages=[{"type": "quantize", "layers": {"*": {"bits": 2.5}}}]), "stages[0].layers.*.bits", "integer"),
        (_bad(stages=[{"type": "quantize", "layers": {"*": {"bits": [1, 40]}}}]), "stages[0].layers.*", "outside"),
        (_bad(stages=[{"type": "prune", "layers": {"*": {"sparsity": 1.0}}}]), "stages[0].layers.*", "outside"),
        (_bad(constraints={"max_accuracy_drop": -1}), "constraints.max_accuracy_drop", "greater than or equal"),
        (_bad(objectives=["accuracy"]), "objectives", "size"),
        (_bad(stages=[{"type": "lowrank", "layers": {"fc1.weight": {}}}]), "stages[0].layers.fc1.weight", "exactly one of 'rank' or 'ratio'"),
        (_bad(stages=[{"type": "lowrank", "layers": {"fc1.weight": {"rank": 4, "ratio": 0.5}}}]), "stages[0].layers.fc1.weight", "exactly one"),
        (_bad(stages=[{"type": "lowrank", "layers": {"fc1.weight": {"ratio": [0.0, 0.5]}}}]), "stages[0].layers.fc1.weight", "ratio=0.0 is outside (0.0, 1.0]"),
        (_bad(stages=[{"type": "lowrank", "layers": {"fc1.weight": {"rank": 2.5}}}]), "stages[0].layers.fc1.weight.rank", "integer"),
        (_bad(stages=[{"type": "lowrank", "layers": {"fc1.weight": {"rnak": 2}}}]), "stages[0].layers.fc1.weight.rnak", "unknown key"),
        (_bad(stages=[{"type": "lowrank", "layers": {}}]), "stages[0].layers", "at least 1"),
        (_bad(stages=[{"type": "prune", "layers": {"*": {"quality": 1}}}, {"type": "lowrank", "layers": {"*": {"rank": 2}}}]), "<root>", "'lowrank' must come before"),
        (_bad(stages=[{"type": "retrain", "rounds": 0}]), "stages[0]", "rounds=0 is outside"),
        (_bad(stages=[{"type": "retrain", "rounds": [1, 1.5]}]), "stages[0].rounds.high", "integer"),
        (_bad(stages=[{"type": "retrain", "dsd": "maybe"}]), "stages[0].dsd", "boolean"),
        (_bad(stages=[{"type": "retrain", "dsd_epochs": 2}]), "stages[0]", "dsd_epochs needs dsd: true"),
        (_bad(stages=[{"type": "retrain", "schedule": "exp"}]), "stages[0].schedule", "cubic"),
        (_bad(stages=[{"type": "retrain", "distill": {"weight": 1.5}}]), "stages[0].distill", "weight=1.5 is outside [0.0, 1.0]"),
        (_bad(stages=[{"type": "retrain", "distill": {"temperature": 0}}]), "stages[0].distill", "temperature=0"),
        (_bad(stages=[{"type": "retrain", "distill": {"tau": 2}}]), "stages[0].distill.tau", "unknown key"),
        (_bad(stages=[{"type": "quantize", "layers": {"*": {"bits": 4}}, "finetune_epochs": -1}]), "stages[0]", "finetune_epochs=-1 is outside"),
        (_bad(stages=[{"type": "quantize", "layers": {"*": {"bits": 4}}, "finetune_lr": 0}]), "stages[0]", "finetune_lr=0"),
    ],
)
def test_bad_fields_are_named(data: dict[str, object], field: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_sweep(data, source="sweep.yaml")
    message = str(info.value)
    assert message.startswith(f"sweep.yaml: {field}: "), message
    assert words in message
    assert "\n" not in message


def test_new_stage_fields_parse() -> None:
    config = parse_sweep(
        _bad(
            stages=[
                {"type": "lowrank", "layers": {"fc1.weight": {"ratio": [0.1, 0.5]}, "fc2.weight": {"rank": 8}}},
                {"type": "prune", "layers": {"*.weight": {"sparsity": [0.5, 0.9]}}},
                {"type": "retrain", "epochs": 1, "rounds": [1, 3], "schedule": "linear", "dsd": True,
                 "distill": {"weight": [0.2, 0.8], "temperature": 4}},
                {"type": "quantize", "layers": {"*.weight": {"bits": [2, 4]}}, "finetune_epochs": 2, "finetune_lr": 1e-4},
            ]
        )
    )
    lowrank, _, retrain, quantize = config.stages
    assert lowrank.type == "lowrank" and lowrank.layers["fc2.weight"].rank == 8
    assert retrain.dsd and retrain.schedule == "linear" and retrain.distill is not None
    assert quantize.finetune_epochs == 2


def test_overrides_replace_file_values() -> None:
    config = parse_sweep(TINY_SWEEP, overrides={"n_trials": 9, "study": "other", "workers": None})
    assert (config.n_trials, config.study, config.workers) == (9, "other", 2)


def test_unreadable_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such sweep file"):
        load_sweep(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("study: [unclosed\n")
    with pytest.raises(ConfigError, match="line"):
        load_sweep(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_sweep(scalar)


def test_search_identity_ignores_run_knobs() -> None:
    a = parse_sweep(TINY_SWEEP)
    b = parse_sweep(TINY_SWEEP, overrides={"n_trials": 50, "workers": 1, "storage": "sqlite:///x.db"})
    assert a.search_identity() == b.search_identity()
    c = parse_sweep(yaml.safe_load(yaml.safe_dump(_bad(seed=3))))
    assert a.search_identity() != c.search_identity()


def test_sparsity_from_sensitivity_parses_and_its_bounds_are_checked() -> None:
    stages = [{"type": "prune", "layers": {"*": {"sparsity": "sensitivity"}}}]
    config = parse_sweep(_bad(stages=stages))
    assert config.stages[0].layers["*"].sparsity == "sensitivity"
    assert config.stages[0].sensitivity.high_drop == 0.05
    with pytest.raises(ConfigError, match=r"stages\[0\]\.sensitivity: low_drop"):
        parse_sweep(_bad(stages=[{**stages[0], "sensitivity": {"low_drop": 0.2, "high_drop": 0.1}}]))
    with pytest.raises(ConfigError, match="sparsity"):
        parse_sweep(_bad(stages=[{"type": "prune", "layers": {"*": {"sparsity": "sensitive"}}}]))
