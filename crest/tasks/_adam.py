"""Adam without torch.optim: the same arithmetic, none of its import cost.

The first ``torch.optim`` optimizer a process builds imports ``torch._dynamo`` (its
methods are wrapped to keep the compiler out), which costs about 1 s of CPU (measured
on the 2-core development machine, torch 2.13): in every worker's first trial and in
the baseline's training, so on the critical path of a sweep's start. crest's loops need
plain Adam only (no weight decay, no AMSGrad), so :class:`Adam` computes exactly what
``torch.optim.Adam`` computes by default, with the same operations in the same order:
one tensor at a time on the CPU (torch's default there), the ``torch._foreach_*`` form on
other devices (torch's default on CUDA), so results match torch's bit for bit (tested
against both of torch's forms). A workload's own ``fit`` may still use ``torch.optim``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["Adam"]


class Adam:
    """Adam (Kingma and Ba, 2015) over ``params``, as ``torch.optim.Adam(params, lr=lr)``.

    Args:
        params: the tensors to optimize (leaf tensors with ``requires_grad``), on any
            devices; a parameter without a gradient at a step is skipped, as torch does.
        lr: the learning rate.
        betas: decay rates of the first and second moment estimates.
        eps: added to the denominator.
        foreach: True: the multi-tensor form everywhere; False: one tensor at a time;
            None (default): as torch chooses, one at a time on the CPU only.

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
    ) -> None:
        self.params = list(params)
        if not lr >= 0.0 or not eps >= 0.0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Adam: lr={lr}, betas={betas}, eps={eps} are out of range")
        if len({id(p) for p in self.params}) != len(self.params):
            raise ValueError("Adam: a parameter is given twice")
        self.lr, (self.beta1, self.beta2), self.eps = float(lr), betas, float(eps)
        self.foreach = foreach
        # per parameter (by position): [steps taken, first moment, second moment]
        self._state: dict[int, tuple[list[int], torch.Tensor, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop (or zero) every parameter's gradient."""
        for p in self.params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One Adam update of every parameter that has a gradient."""
        one_by_one: list[tuple[int, torch.Tensor]] = []
        elsewhere: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i, p in enumerate(self.params):
            grad = p.grad
            if grad is None:
                continue
            if grad.is_sparse:
                raise ValueError("Adam: sparse gradients are not supported")
            if i not in self._state:
                self._state[i] = ([0], torch.zeros_like(p, memory_format=torch.preserve_format),
                                  torch.zeros_like(p, memory_format=torch.preserve_format))
            if self.foreach is False or (self.foreach is None and p.device.type == "cpu"):
                one_by_one.append((i, grad))
            else:
                elsewhere.setdefault((p.device, p.dtype), []).append(i)
        for i, grad in one_by_one:
            self._step_one(i, grad)
        for group in elsewhere.values():
            self._step_foreach(group)

    def _step_one(self, i: int, grad: torch.Tensor) -> None:
        """torch's single-tensor Adam (its CPU default) for parameter ``i``, whose gradient is ``grad``."""
        p = self.params[i]
        steps, exp_avg, exp_avg_sq = self._state[i]
        steps[0] += 1
        exp_avg.lerp_(grad, 1 - self.beta1)
        exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        bias_correction1 = 1 - self.beta1 ** steps[0]
        bias_correction2 = 1 - self.beta2 ** steps[0]
        step_size = self.lr / bias_correction1
        denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(self.eps)
        p.addcdiv_(exp_avg, denom, value=-step_size)

    def _step_foreach(self, group: list[int]) -> None:
        """torch's multi-tensor Adam (its CUDA default) for parameters of one device and dtype."""
        params = [self.params[i] for i in group]
        grads = [p.grad for p in params]
        states = [self._state[i] for i in group]
        exp_avgs = [s[1] for s in states]
        exp_avg_sqs = [s[2] for s in states]
        for s in states:
            s[0][0] += 1
        torch._foreach_lerp_(exp_avgs, grads, 1 - self.beta1)  # type: ignore[arg-type]
        torch._foreach_mul_(exp_avg_sqs, self.beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - self.beta2)  # type: ignore[arg-type]
        bias_correction1 = [1 - self.beta1 ** s[0][0] for s in states]
        bias_correction2 = [1 - self.beta2 ** s[0][0] for s in states]
        step_size = [(self.lr / bc) * -1 for bc in bias_correction1]
        bias_correction2_sqrt = [bc**0.5 for bc in bias_correction2]
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denom, bias_correction2_sqrt)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(params, exp_avgs, denom, step_size)
