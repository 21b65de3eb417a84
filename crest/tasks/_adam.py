"""Adam without torch.optim: torch's arithmetic, none of its import cost.

The first ``torch.optim`` optimizer a process builds imports ``torch._dynamo`` (its
methods are wrapped to keep the compiler out), which costs about 1 s of CPU (measured
on the 2-core development machine, torch 2.13): in every worker's first trial and in
the baseline's training, so on the critical path of a sweep's start. crest's loops need
plain Adam only (no weight decay, no AMSGrad), so :class:`Adam` computes exactly what
``torch.optim.Adam`` computes in one of its three forms, bit for bit (tested against each):

- ``fused`` (crest's default wherever torch has the kernel: the CPU since torch 2.4, and
  CUDA): torch's fused kernel (``torch._fused_adam_``), one pass over each tensor with no
  temporaries. On LeNet-300-100's baseline it halves the optimizer's time, about a fifth
  of the whole training (``bench/adam.py``). torch's own default is not fused; crest's
  is, because its training loops are where a sweep spends its time;
- ``foreach``: the multi-tensor form (torch's default on CUDA);
- one tensor at a time (torch's default on the CPU), with the denominator written into a
  buffer kept per parameter instead of two new tensors per step (same operations, same
  bits).

A workload's own ``fit`` may still use ``torch.optim``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch

__all__ = ["Adam", "fused_available"]

logger = logging.getLogger(__name__)

# (device type, dtype) -> whether torch._fused_adam_ runs there; probed once per process
_FUSED: dict[tuple[str, torch.dtype], bool] = {}


class _ParamState:
    """One parameter's state: its form ("fused", "foreach" or "one"), steps taken, the two
    moments; the fused form also keeps the steps as a float32 tensor on the parameter's
    device (the kernel reads it there), the one-at-a-time form its denominator's buffer
    (made at its first step)."""

    __slots__ = ("denom", "exp_avg", "exp_avg_sq", "form", "step_tensor", "steps")

    def __init__(self, p: torch.Tensor, form: str) -> None:
        self.form = form
        self.steps = 0
        self.exp_avg = torch.zeros_like(p, memory_format=torch.preserve_format)
        self.exp_avg_sq = torch.zeros_like(p, memory_format=torch.preserve_format)
        self.step_tensor = torch.zeros((), device=p.device, dtype=torch.float32) if form == "fused" else None
        self.denom: torch.Tensor | None = None  # made at the first one-at-a-time step


def fused_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether torch's fused Adam kernel runs for tensors of ``dtype`` on ``device``'s
    type: probed once per process and pair, on one-element tensors there (torch 2.3 has
    no CPU kernel; other devices may have none)."""
    key = (device.type, dtype)
    known = _FUSED.get(key)
    if known is not None:
        return known
    fused = getattr(torch, "_fused_adam_", None)
    ok = False
    if fused is not None and dtype.is_floating_point:
        try:
            with torch.no_grad():
                t = [torch.zeros(1, device=device, dtype=dtype) for _ in range(4)]
                step = [torch.ones((), device=device, dtype=torch.float32)]
                fused([t[0]], [t[1]], [t[2]], [t[3]], [], step, amsgrad=False, lr=1e-3, beta1=0.9, beta2=0.999,
                      weight_decay=0.0, eps=1e-8, maximize=False, grad_scale=None, found_inf=None)
            ok = True
        except (RuntimeError, NotImplementedError, TypeError) as e:
            logger.debug("torch's fused Adam is not available for %s on %s: %s", dtype, device.type, e)
    _FUSED[key] = ok
    return ok


class Adam:
    """Adam (Kingma and Ba, 2015) over ``params``, as ``torch.optim.Adam(params, lr=lr)``.

    Args:
        params: the tensors to optimize (leaf tensors with ``requires_grad``), on any
            devices; a parameter without a gradient at a step is skipped, as torch does.
        lr: the learning rate.
        betas: decay rates of the first and second moment estimates.
        eps: added to the denominator.
        fused: True or None (default): torch's fused kernel wherever it runs for the
            parameter's device and dtype (:func:`fused_available`), else as ``foreach``
            says; False: never fused.
        foreach: for parameters not fused: True: the multi-tensor form everywhere; False:
            one tensor at a time; None (default): as torch chooses, one at a time on the
            CPU only.

    Raises:
        ValueError: a hyperparameter out of range, or a repeated parameter.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        self.params = list(params)
        if not lr >= 0.0 or not eps >= 0.0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Adam: lr={lr}, betas={betas}, eps={eps} are out of range")
        if len({id(p) for p in self.params}) != len(self.params):
            raise ValueError("Adam: a parameter is given twice")
        self.lr, (self.beta1, self.beta2), self.eps = float(lr), betas, float(eps)
        self.foreach, self.fused = foreach, fused
        self._state: dict[int, _ParamState] = {}  # per parameter, by position

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop (or zero) every parameter's gradient."""
        for p in self.params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_().zero_()

    def _form(self, p: torch.Tensor) -> str:
        if self.fused is not False and fused_available(p.device, p.dtype):
            return "fused"
        if self.foreach is False or (self.foreach is None and p.device.type == "cpu"):
            return "one"
        return "foreach"

    @torch.no_grad()
    def step(self) -> None:
        """One Adam update of every parameter that has a gradient."""
        one_by_one: list[tuple[int, torch.Tensor]] = []
        groups: dict[tuple[str, torch.device, torch.dtype], list[int]] = {}
        for i, p in enumerate(self.params):
            grad = p.grad
            if grad is None:
                continue
            if grad.is_sparse:
                raise ValueError("Adam: sparse gradients are not supported")
            state = self._state.get(i)
            if state is None:
                state = self._state[i] = _ParamState(p, self._form(p))
            if state.form == "one":
                one_by_one.append((i, grad))
            else:
                groups.setdefault((state.form, p.device, p.dtype), []).append(i)
        for i, grad in one_by_one:
            self._step_one(i, grad)
        for (form, _, _), group in groups.items():
            if form == "fused":
                self._step_fused(group)
            else:
                self._step_foreach(group)

    def _step_one(self, i: int, grad: torch.Tensor) -> None:
        """torch's single-tensor Adam (its CPU default) for parameter ``i``, whose gradient is ``grad``."""
        p = self.params[i]
        state = self._state[i]
        exp_avg, exp_avg_sq = state.exp_avg, state.exp_avg_sq
        state.steps = steps = state.steps + 1
        exp_avg.lerp_(grad, 1 - self.beta1)
        exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        bias_correction1 = 1 - self.beta1**steps
        bias_correction2 = 1 - self.beta2**steps
        step_size = self.lr / bias_correction1
        # torch: denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps), into the kept buffer
        denom = state.denom
        if denom is None:
            denom = state.denom = torch.empty_like(exp_avg_sq)
        torch.sqrt(exp_avg_sq, out=denom)
        denom.div_(bias_correction2**0.5).add_(self.eps)
        p.addcdiv_(exp_avg, denom, value=-step_size)

    def _step_fused(self, group: list[int]) -> None:
        """torch's fused Adam (``Adam(fused=True)``) for parameters of one device and dtype."""
        params = [self.params[i] for i in group]
        grads = [g for p in params if (g := p.grad) is not None]  # all of them: step() grouped those with one
        states = [self._state[i] for i in group]
        steps = [s.step_tensor for s in states if s.step_tensor is not None]  # all: made with the fused form
        for s in states:
            s.steps += 1
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(
            params, grads, [s.exp_avg for s in states], [s.exp_avg_sq for s in states], [], steps, amsgrad=False,
            lr=self.lr, beta1=self.beta1, beta2=self.beta2, weight_decay=0.0, eps=self.eps, maximize=False,
            grad_scale=None, found_inf=None,
        )

    def _step_foreach(self, group: list[int]) -> None:
        """torch's multi-tensor Adam (its CUDA default) for parameters of one device and dtype."""
        params = [self.params[i] for i in group]
        grads = [p.grad for p in params]
        states = [self._state[i] for i in group]
        exp_avgs, exp_avg_sqs = [s.exp_avg for s in states], [s.exp_avg_sq for s in states]
        for s in states:
            s.steps += 1
        steps = [s.steps for s in states]
        torch._foreach_lerp_(exp_avgs, grads, 1 - self.beta1)  # type: ignore[arg-type]
        torch._foreach_mul_(exp_avg_sqs, self.beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - self.beta2)  # type: ignore[arg-type]
        bias_correction1 = [1 - self.beta1**n for n in steps]
        bias_correction2 = [1 - self.beta2**n for n in steps]
        step_size = [(self.lr / bc) * -1 for bc in bias_correction1]
        bias_correction2_sqrt = [bc**0.5 for bc in bias_correction2]
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denom, bias_correction2_sqrt)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(params, exp_avgs, denom, step_size)
