"""``crest.load`` on hostile artifacts: no code a file names ever runs, and every bomb is
refused against the workload's model before anything is decoded.

Each hostile load runs in a fresh interpreter whose working directory holds the files (so
``import evil_mod`` would find one there, as in a user's shell) and is measured there.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

import crest
from crest.exceptions import CrestError, WorkloadError
from crest.tasks import encode_state, get_workload, state_to_numpy
from tests.format import _bombs

_LOAD = "import crest\nimport crest.tasks._pipeline  # imported here (torch with it), not in the measured call"

EVIL = textwrap.dedent(
    """
    from pathlib import Path
    Path("marker").write_text("imported")

    def make():
        Path("marker").write_text("called")
    """
)


def _tiny_blob(metadata: dict[str, object]) -> bytes:
    torch.manual_seed(0)
    return encode_state(state_to_numpy(get_workload("tiny-digits").build_model()), metadata=metadata)


@pytest.mark.parametrize("named", ["os:abort", "evil_mod:make", "evil_mod:nothing"])
def test_an_artifact_cannot_choose_code_to_run(tmp_path: Path, named: str) -> None:
    (tmp_path / "evil_mod.py").write_text(EVIL)
    blob = _tiny_blob({"workload": named})
    c = _bombs.cost(_LOAD, "crest.load(DATA)", data=blob, tmp_path=tmp_path)
    assert c.error == "WorkloadError", c
    assert "pass the workload" in c.message and "built-in" in c.message
    assert not (tmp_path / "marker").exists(), "the artifact's module was imported"


def test_a_module_function_workload_is_used_when_the_caller_passes_it(tmp_path: Path) -> None:
    (tmp_path / "good_mod.py").write_text(
        "from crest.tasks import get_workload\ndef make():\n    return get_workload('tiny-digits')\n"
    )
    blob = _tiny_blob({"workload": "good_mod:make"})
    c = _bombs.cost(_LOAD, "crest.load(DATA, workload='good_mod:make')", data=blob, tmp_path=tmp_path)
    assert c.error is None, c


def test_get_workload_refuses_imports_when_told_to(tmp_path: Path) -> None:
    (tmp_path / "evil_mod.py").write_text(EVIL)
    with pytest.raises(WorkloadError, match="built-in"):
        get_workload("evil_mod:make", search_path=[str(tmp_path)], allow_import=False)
    assert not (tmp_path / "marker").exists()
    assert get_workload("tiny-digits", allow_import=False).name == "tiny-digits"


def _refused(c: _bombs.Cost, what: str) -> None:
    assert c.error is not None and "CrestError" in c.base_classes, (what, c)
    assert c.cheap(), f"{what}: refusing took {c.seconds:.2f} s and {c.rss_growth_mb:.0f} MB more RSS ({c.message})"
    assert "\n" not in c.message, c.message


@pytest.mark.parametrize(
    "label",
    ["huge sparse", "huge dense", "many tensors", "extra name", "rank 4e6", "conv ranks 4e6"],
)
def test_bombs_are_refused_against_the_model_before_decoding(tmp_path: Path, label: str) -> None:
    if label == "huge sparse":
        blob = _bombs.huge_sparse_artifact(2**28)  # 1 GiB of zeros declared in ~600 bytes
    elif label == "huge dense":
        blob = _bombs.huge_dense_artifact(2**28)
    elif label == "many tensors":
        blob = _bombs.many_tensors_header(60_000)
    elif label == "extra name":  # the model's own tensors, and one more of 1 GiB
        shapes = {k: tuple(v.shape) for k, v in get_workload("tiny-digits").build_model().state_dict().items()}
        entries = [_bombs.empty_sparse(k, shape) for k, shape in shapes.items()]
        blob = _bombs.artifact([*entries, _bombs.empty_sparse("zz.weight", (2**28,))], {"workload": "tiny-digits"})
    elif label == "rank 4e6":
        blob = _tiny_blob({"workload": "tiny-digits", "lowrank": {"fc1": {"kind": "linear", "rank": 4_000_000}}})
    else:
        blob = _tiny_blob({"workload": "vgg-mnist", "lowrank": {"conv3": {"kind": "conv2d", "ranks": [4_000_000, 2]}}})
    assert len(blob) < 10_000_000
    # tracing slows parsing 60,000 header entries past the time bound; that bomb is the parse
    trace = label != "many tensors"
    _refused(_bombs.cost(_LOAD, "crest.load(DATA)", data=blob, tmp_path=tmp_path, trace=trace), label)


@pytest.mark.parametrize(
    "entry",
    [
        {"kind": "linear", "rank": -5},
        {"kind": "linear", "rank": 0},
        {"kind": "linear", "rank": 33},  # fc1 is [32, 64]: full rank is 32
        {"kind": "linear", "rank": 2.5},
        {"kind": "linear", "rank": True},
        {"kind": "linear", "rank": "8"},
        {"kind": "linear"},
        {"kind": "conv2d", "ranks": [2, 2]},
        {"kind": "linear", "rank": 8, "extra": 1},
        ["linear", 8],
    ],
)
def test_a_malformed_lowrank_structure_is_a_crest_error(entry: object) -> None:
    blob = _tiny_blob({"workload": "tiny-digits", "lowrank": {"fc1": entry}})
    with pytest.raises(CrestError, match="fc1") as info:
        crest.load(blob)
    assert "\n" not in str(info.value)


def test_a_structure_naming_a_missing_or_odd_layer_is_a_crest_error() -> None:
    for layer in ("nope", "", "fc1.weight", "training"):
        blob = _tiny_blob({"workload": "tiny-digits", "lowrank": {layer: {"kind": "linear", "rank": 4}}})
        with pytest.raises(CrestError):
            crest.load(blob)


def test_an_honest_artifact_still_loads() -> None:
    model = get_workload("tiny-digits").build_model()
    blob = encode_state(state_to_numpy(model), metadata={"workload": "tiny-digits"})
    loaded = crest.load(blob)
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
