"""Low rank: SVD / Tucker-2 factors, factorised models, plans and artifacts that rebuild."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import crest
from crest import gpu
from crest.config import parse_sweep
from crest.exceptions import ConfigError, CrestError
from crest.tasks import (
    LowRankLinear,
    TrialRunner,
    Tucker2Conv2d,
    evaluate,
    factorize_layer,
    get_workload,
    resolve_plan,
    svd_factors,
    train_baseline,
    tucker2_factors,
)


def _rel_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return float((approx - exact).norm() / exact.norm())


def test_svd_error_falls_with_rank_and_vanishes_at_full_rank() -> None:
    w = torch.randn(40, 30, generator=torch.Generator().manual_seed(0))
    errors = []
    for r in (1, 5, 10, 20, 30):
        first, last = svd_factors(w, r)
        assert first.shape == (r, 30) and last.shape == (40, r)
        errors.append(_rel_error(last @ first, w))
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 1e-5


def test_tucker2_error_falls_with_rank_and_vanishes_at_full_rank() -> None:
    w = torch.randn(24, 16, 3, 3, generator=torch.Generator().manual_seed(1))
    errors = []
    for r_in, r_out in ((2, 3), (4, 6), (8, 12), (12, 18), (16, 24)):
        first, core, last = tucker2_factors(w, r_in, r_out)
        assert first.shape == (r_in, 16, 1, 1)
        assert core.shape == (r_out, r_in, 3, 3)
        assert last.shape == (24, r_out, 1, 1)
        u_in = first.reshape(r_in, 16)
        u_out = last.reshape(24, r_out)
        approx = torch.einsum("rskl,or,si->oikl", core, u_out, u_in)
        errors.append(_rel_error(approx, w))
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 1e-5


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, stride=2)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_factorised_model_equals_the_original_at_full_rank() -> None:
    torch.manual_seed(0)
    net = _Net()
    x = torch.randn(6, 3, 8, 8)
    expected = net(x)
    conv = factorize_layer(net, "conv", ratio=1.0)
    fc = factorize_layer(net, "fc", ratio=1.0)
    assert conv == {"kind": "conv2d", "ranks": [3, 8]} and fc == {"kind": "linear", "rank": 5}
    assert isinstance(net.conv, Tucker2Conv2d) and isinstance(net.fc, LowRankLinear)
    assert [n for n, _ in net.named_parameters()] == [
        "conv.first.weight", "conv.core.weight", "conv.last.weight", "conv.last.bias",
        "fc.first.weight", "fc.last.weight", "fc.last.bias",
    ]
    torch.testing.assert_close(net(x), expected, rtol=1e-4, atol=1e-5)
    # a smaller rank is an approximation with fewer parameters
    small = _Net()
    n_before = sum(p.numel() for p in small.parameters())
    factorize_layer(small, "fc", rank=2)
    assert sum(p.numel() for p in small.parameters()) < n_before
    with pytest.raises(CrestError, match="ReLU|no layer"):
        factorize_layer(small, "nothing", rank=1)


def _shapes(model: nn.Module) -> tuple[list[str], dict[str, tuple[int, ...]]]:
    return [n for n, _ in model.named_parameters()], {n: tuple(p.shape) for n, p in model.named_parameters()}


def test_later_stages_match_the_factorised_names() -> None:
    names, shapes = _shapes(get_workload("lenet5-mnist").build_model())
    stages = parse_sweep(
        {
            "study": "s",
            "workload": "lenet5-mnist",
            "n_trials": 1,
            "stages": [
                {"type": "lowrank", "layers": {"conv2.weight": {"ratio": [0.2, 0.8]}, "fc1.weight": {"rank": 16}}},
                {"type": "prune", "layers": {"*.core.weight": {"sparsity": 0.5}, "fc1.*.weight": {"quality": 1.0}}},
                {"type": "quantize", "layers": {"*.weight": {"bits": 4}}},
            ],
        }
    ).stages
    plan = resolve_plan(stages, names, shapes=shapes)
    lowrank, prune, quantize = plan.stages
    assert set(lowrank.layers) == {"conv2.weight", "fc1.weight"}
    assert set(prune.layers) == {"conv2.core.weight", "fc1.first.weight", "fc1.last.weight"}
    assert "conv2.weight" not in quantize.layers and "conv2.first.weight" in quantize.layers
    searched = {p.name for p in plan.searched()}
    assert searched == {"lowrank/conv2.weight/ratio"}
    with pytest.raises(ConfigError, match="shapes"):
        resolve_plan(stages, names)
    bias = parse_sweep(
        {"study": "s", "workload": "w", "n_trials": 1, "stages": [{"type": "lowrank", "layers": {"*.bias": {"rank": 2}}}]}
    ).stages
    with pytest.raises(ConfigError, match="not the weight of a Linear or Conv2d"):
        resolve_plan(bias, names, shapes=shapes)


@pytest.mark.slow
def test_crest_load_of_a_lowrank_artifact_gives_the_recorded_accuracy() -> None:
    torch.set_num_threads(2)
    wl = get_workload("tiny-digits")
    blob, base = train_baseline(wl, seed=0)
    model = wl.build_model()
    names, shapes = _shapes(model)
    stages = parse_sweep(
        {
            "study": "s",
            "workload": "tiny-digits",
            "n_trials": 1,
            "stages": [
                {"type": "lowrank", "layers": {"fc1.weight": {"rank": 12}}},
                {"type": "prune", "layers": {"*.weight": {"sparsity": 0.5}}},
                {"type": "retrain", "epochs": 2},
                {"type": "quantize", "layers": {"*.weight": {"bits": 4}}},
            ],
        }
    ).stages
    plan = resolve_plan(stages, names, shapes=shapes)
    out = TrialRunner(wl, plan, blob, base).run(plan.fixed_params(), seed=0)
    meta = gpu.inspect(out.blob)["metadata"]
    assert meta["lowrank"] == {"fc1": {"kind": "linear", "rank": 12}}
    assert out.layers["fc1.first.weight"]["rank"] == 12 and out.layers["fc1.first.weight"]["bits"] == 4
    loaded = crest.load(out.blob, "tiny-digits")
    assert isinstance(loaded.fc1, LowRankLinear) and not loaded.training
    assert evaluate(loaded, wl) == out.accuracy
    assert out.accuracy > base - 0.1
    # the workload recorded in the artifact is the default
    assert evaluate(crest.load(out.blob), wl) == out.accuracy


def test_vgg_tucker2_artifact_rebuilds_from_metadata_alone() -> None:
    from crest.tasks import encode_state, state_to_numpy

    torch.set_num_threads(2)
    wl = get_workload("vgg-mnist")
    torch.manual_seed(0)
    model = wl.build_model()
    blob = encode_state(state_to_numpy(model), metadata={"workload": wl.name})
    base = evaluate(model, wl)
    names, shapes = _shapes(model)
    stages = parse_sweep(
        {
            "study": "v",
            "workload": "vgg-mnist",
            "n_trials": 1,
            "stages": [
                {"type": "lowrank", "layers": {"conv[34].weight": {"ratio": 0.5}, "fc1.weight": {"rank": 32}}},
                {"type": "quantize", "layers": {"*.weight": {"bits": 6}}},
            ],
        }
    ).stages
    plan = resolve_plan(stages, names, shapes=shapes)
    runner = TrialRunner(wl, plan, blob, base)
    out = runner.run(plan.fixed_params(), seed=0)
    structure = gpu.inspect(out.blob)["metadata"]["lowrank"]
    assert structure["conv3"] == {"kind": "conv2d", "ranks": [32, 32]}
    assert out.size_bytes < len(blob) / 5
    loaded = crest.load(out.blob)
    assert isinstance(loaded.conv3, Tucker2Conv2d) and isinstance(loaded.fc1, LowRankLinear)
    assert evaluate(loaded, wl) == out.accuracy
    assert sum(p.numel() for p in loaded.parameters()) < sum(p.numel() for p in model.parameters())
