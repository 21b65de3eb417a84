"""Layer globs resolved against a real wide model: 2-D and up only, embeddings only by name."""

from __future__ import annotations

from typing import Any

import pytest

from crest.config import is_glob, match_layers, parse_sweep
from crest.exceptions import ConfigError
from crest.tasks import embedding_tables, resolve_plan

from ..helpers import TINY_SWEEP
from ..wide_workload import LINEARS, WideNet


def _plan(stages: list[dict[str, Any]]) -> Any:
    model = WideNet()
    named = list(model.named_parameters())
    cfg = parse_sweep({**TINY_SWEEP, "workload": "tests.wide_workload:make", "stages": stages})
    return resolve_plan(
        cfg.stages, [n for n, _ in named], shapes={n: tuple(p.shape) for n, p in named},
        embeddings=embedding_tables(model),
    )


def _layers(plan: Any, kind: str) -> list[str]:
    return [name for stage in plan.stages if stage.type == kind for name in stage.layers]


def test_embedding_tables_names_the_embedding_weights() -> None:
    assert embedding_tables(WideNet()) == ["emb.weight"]


def test_star_weight_skips_1d_parameters_and_embeddings() -> None:
    plan = _plan([
        {"type": "prune", "layers": {"*.weight": {"quality": [0.1, 1.0]}}},
        {"type": "quantize", "layers": {"*": {"bits": [3, 5]}}},
    ])
    expected = [f"{m}.weight" for m in LINEARS]
    assert _layers(plan, "prune") == expected
    assert _layers(plan, "quantize") == expected  # "*" leaves biases, the LayerNorm and the embedding out
    searched = {p.name for p in plan.searched()}
    assert "prune/norm.weight/quality" not in searched and "quantize/emb.weight/bits" not in searched


def test_exact_names_include_1d_parameters_and_embeddings() -> None:
    plan = _plan([
        {"type": "prune", "layers": {"emb.weight": {"sparsity": 0.5}, "blocks.*.weight": {"quality": 1.0}}},
        {"type": "quantize", "layers": {"norm.weight": {"bits": 6}, "head.bias": {"bits": 4}, "*.weight": {"bits": 5}}},
    ])
    assert _layers(plan, "prune") == ["emb.weight", *(f"blocks.{i}.weight" for i in range(6))]
    quantized = _layers(plan, "quantize")
    assert quantized[:2] == ["norm.weight", "head.bias"]
    assert "emb.weight" not in quantized and set(quantized[2:]) == {f"{m}.weight" for m in LINEARS}
    assert plan.fixed_params()["quantize/norm.weight/bits"] == 6


@pytest.mark.parametrize(
    ("pattern", "words"),
    [
        ("norm.*", "glob 'norm.*' matches only 1-D parameters or embedding tables (norm.weight, norm.bias)"),
        ("*.bias", "glob '*.bias' matches only 1-D parameters or embedding tables (inp.bias, norm.bias, "),
        ("emb.*", "glob 'emb.*' matches only 1-D parameters or embedding tables (emb.weight)"),
        ("nothing.*", "pattern 'nothing.*' matches no parameter"),
        ("norm.weights", "pattern 'norm.weights' matches no parameter"),
    ],
)
def test_a_glob_left_with_nothing_is_an_error_naming_it(pattern: str, words: str) -> None:
    with pytest.raises(ConfigError, match="stages\\[0\\].layers: ") as e:
        _plan([{"type": "quantize", "layers": {pattern: {"bits": 4}}}])
    assert words in str(e.value), str(e.value)
    if "1-D" in words:
        assert "name one exactly to include it" in str(e.value)


def test_lowrank_globs_skip_embeddings_and_later_globs_skip_factor_biases() -> None:
    plan = _plan([
        {"type": "lowrank", "layers": {"*.weight": {"ratio": 0.5}}},
        {"type": "quantize", "layers": {"*": {"bits": 4}}},
    ])
    assert _layers(plan, "lowrank") == [f"{m}.weight" for m in LINEARS]
    quantized = _layers(plan, "quantize")
    assert "inp.first.weight" in quantized and "inp.last.weight" in quantized
    assert not [n for n in quantized if n.endswith(".bias") or n.startswith(("norm.", "emb."))]
    with pytest.raises(ConfigError, match="'emb.weight', which is not the weight of a Linear or Conv2d"):
        _plan([{"type": "lowrank", "layers": {"emb.weight": {"rank": 2}}}])
    with pytest.raises(ConfigError, match=r"glob 'n\*' matches only parameters that are not the weight of a Linear "
                       r"or Conv2d layer \(norm.weight, norm.bias\); low rank takes 2-D and 4-D weights"):
        _plan([{"type": "lowrank", "layers": {"n*": {"rank": 2}}}])


def test_without_shapes_globs_match_every_name() -> None:
    """Callers that pass no shapes (no model at hand) keep the plain glob match."""
    cfg = parse_sweep({**TINY_SWEEP, "stages": [{"type": "quantize", "layers": {"*": {"bits": 4}}}]})
    assert _layers(resolve_plan(cfg.stages, ["fc1.weight", "fc1.bias"]), "quantize") == ["fc1.weight", "fc1.bias"]
    assert match_layers("*", ["a.weight", "a.bias"], eligible={"a.weight"}) == ["a.weight"]
    assert match_layers("a.bias", ["a.weight", "a.bias"], eligible={"a.weight"}) == ["a.bias"]
    assert is_glob("fc[12].weight") and is_glob("fc?.w") and not is_glob("fc1.weight")
