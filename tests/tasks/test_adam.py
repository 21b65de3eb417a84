"""crest's Adam computes what torch.optim.Adam computes (each of its forms), bit for bit,
without its import cost."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from crest.tasks._adam import Adam, fused_available


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10), nn.Linear(10, 3))


def _run(model: nn.Module, opt: object, steps: int, *, skip_last_layer_every: int = 0) -> list[float]:
    """Train on fixed random data; every ``skip_last_layer_every`` steps the last layer gets no gradient."""
    gen = torch.Generator().manual_seed(7)
    device = next(model.parameters()).device
    losses = []
    for step in range(steps):
        x = torch.randn(16, 1, 8, 8, generator=gen).to(device)
        y = torch.randint(0, 3, (16,), generator=gen).to(device)
        opt.zero_grad(set_to_none=True)  # type: ignore[attr-defined]
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if skip_last_layer_every and step % skip_last_layer_every == 0:
            for p in model[-1].parameters():
                p.grad = None
        opt.step()  # type: ignore[attr-defined]
        losses.append(loss.item())
    return losses


FORMS = {"one at a time": {"foreach": False, "fused": False}, "foreach": {"foreach": True, "fused": False},
         "fused": {"fused": True}}


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("skip", [0, 3])
def test_matches_torch_adam_bit_for_bit_on_cpu(form: str, skip: int) -> None:
    ours, theirs = _model(0), _model(0)
    lr = 3e-3
    kwargs = FORMS[form]
    a = _run(ours, Adam(ours.parameters(), lr=lr, **kwargs), 40, skip_last_layer_every=skip)
    b = _run(theirs, torch.optim.Adam(theirs.parameters(), lr=lr, **kwargs), 40, skip_last_layer_every=skip)
    assert a == b
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        assert torch.equal(p, q), name
    assert a[-1] < a[0]  # it trained


def test_default_form_is_torchs_fused_kernel_on_cpu() -> None:
    """torch 2.13 has the CPU kernel, so crest's default is fused there; the forms differ in
    the last bits (so the test would see a wrong form)."""
    assert fused_available(torch.device("cpu"), torch.float32)
    ours, fused, one = _model(1), _model(1), _model(1)
    _run(ours, Adam(ours.parameters(), lr=1e-2), 10)
    _run(fused, torch.optim.Adam(fused.parameters(), lr=1e-2, fused=True), 10)
    _run(one, torch.optim.Adam(one.parameters(), lr=1e-2), 10)
    assert all(torch.equal(p, q) for p, q in zip(ours.parameters(), fused.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(ours.parameters(), one.parameters()))


def test_fused_probe_refuses_what_has_no_kernel() -> None:
    """An integer dtype has no fused kernel: the probe says so (and logs), it does not raise."""
    assert not fused_available(torch.device("cpu"), torch.int64)
    assert fused_available(torch.device("cpu"), torch.float64)


def test_a_float64_parameter_is_fused_too() -> None:
    ours, theirs = _model(3).double(), _model(3).double()
    xs = [torch.randn(5, 10, dtype=torch.float64) for _ in range(3)]
    for model, opt in ((ours, Adam(ours.parameters(), lr=1e-2)),
                       (theirs, torch.optim.Adam(theirs.parameters(), lr=1e-2, fused=True))):
        lin = model[-1]
        for x in xs:
            opt.zero_grad()
            lin(x).square().sum().backward()
            opt.step()
    assert all(torch.equal(p, q) for p, q in zip(ours.parameters(), theirs.parameters()))


def test_zero_grad_without_set_to_none_zeroes() -> None:
    w = nn.Parameter(torch.ones(3))
    opt = Adam([w], lr=0.1)
    (w * 2).sum().backward()
    opt.zero_grad(set_to_none=False)
    assert w.grad is not None and torch.equal(w.grad, torch.zeros(3))
    opt.zero_grad()
    assert w.grad is None


@pytest.mark.parametrize("kwargs", [{"lr": -1.0}, {"betas": (1.0, 0.9)}, {"eps": -1e-8}, {"lr": float("nan")}])
def test_rejects_hyperparameters_out_of_range(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="out of range"):
        Adam([nn.Parameter(torch.ones(1))], **kwargs)  # type: ignore[arg-type]


def test_rejects_a_parameter_given_twice() -> None:
    w = nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="twice"):
        Adam([w, w])


def test_a_trial_does_not_import_the_compiler_stack() -> None:
    """The reason this optimizer exists: torch.optim's first use imports torch._dynamo (~1 s).
    A baseline and a whole trial (prune, retrain, quantize with fine-tuning, encode,
    evaluate) run in a fresh process without it."""
    code = """
import sys
from crest.config import parse_sweep
from crest.tasks import TrialRunner, get_workload, resolve_plan
from crest.tasks._pipeline import train_baseline
wl = get_workload("tiny-digits")
stages = [{"type": "prune", "layers": {"*.weight": {"sparsity": 0.8}}}, {"type": "retrain", "epochs": 1},
          {"type": "quantize", "layers": {"*.weight": {"bits": 3}}, "finetune_epochs": 1}]
cfg = parse_sweep({"study": "t", "workload": "tiny-digits", "n_trials": 1, "stages": stages})
named = list(wl.build_model().named_parameters())
plan = resolve_plan(cfg.stages, [n for n, _ in named], shapes={n: tuple(p.shape) for n, p in named})
blob, acc = train_baseline(wl, seed=0, device="cpu")
runner = TrialRunner(wl, plan, blob, acc, device="cpu")
out = runner.run(plan.fixed_params(), seed=0)
assert out.accuracy > 0.5, out
assert "torch._dynamo" not in sys.modules, "torch._dynamo was imported"
import torch
torch.optim.Adam(wl.build_model().parameters())
assert "torch._dynamo" in sys.modules  # the check sees the import it guards against
"""
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.gpu
def test_matches_torch_adam_on_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    for kwargs in FORMS.values():
        ours, theirs = _model(2).cuda(), _model(2).cuda()
        _run(ours, Adam(ours.parameters(), lr=3e-3, **kwargs), 20)
        _run(theirs, torch.optim.Adam(theirs.parameters(), lr=3e-3, **kwargs), 20)
        for p, q in zip(ours.parameters(), theirs.parameters()):
            assert torch.equal(p, q), kwargs
