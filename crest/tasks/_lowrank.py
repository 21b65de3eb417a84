"""Low-rank factorisation: truncated SVD for Linear, Tucker-2 (HOSVD) for Conv2d.

The factors are ordinary layers, so later stages prune, quantize and encode them like
any other. A Linear ``fc1`` [out, in] becomes :class:`LowRankLinear` with ``first``
(Linear in -> r, no bias) and ``last`` (Linear r -> out, the original bias); a Conv2d
``conv2`` [out, in, kh, kw] becomes :class:`Tucker2Conv2d` with ``first`` (1x1 conv
in -> r_in), ``core`` (kh x kw conv r_in -> r_out with the original stride, padding,
dilation) and ``last`` (1x1 conv r_out -> out, the original bias).

The factorised structure is plain JSON (:func:`apply_structure` rebuilds it on a fresh
model), stored in the artifact's metadata under ``"lowrank"``::

    {"fc1": {"kind": "linear", "rank": 30},
     "conv2": {"kind": "conv2d", "ranks": [r_in, r_out]}}
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from crest.exceptions import CrestError
from crest.tasks._factor_names import factor_names, factorised_param_names

__all__ = [
    "LowRankLinear",
    "Tucker2Conv2d",
    "svd_factors",
    "tucker2_factors",
    "linear_rank",
    "conv_ranks",
    "factorize_layer",
    "apply_structure",
    "factor_names",
    "factorised_param_names",
]


class LowRankLinear(nn.Module):
    """``x -> last(first(x))``: a Linear [out, in] through rank ``rank``.

    Args:
        in_features, out_features: the original layer's sizes.
        rank: inner width r (parameters: r x (in + out) + out).
        bias: whether ``last`` has a bias.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, *, bias: bool = True) -> None:
        super().__init__()
        self.first = nn.Linear(in_features, rank, bias=False)
        self.last = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.first(x))


class Tucker2Conv2d(nn.Module):
    """Tucker-2 convolution: 1x1 (in -> r_in), kxk core (r_in -> r_out), 1x1 (r_out -> out)."""

    def __init__(self, conv: nn.Conv2d, r_in: int, r_out: int) -> None:
        super().__init__()
        if conv.groups != 1:
            raise CrestError("Tucker-2 needs an ungrouped Conv2d (groups=1)")
        if conv.padding_mode != "zeros":
            raise CrestError("Tucker-2 needs a Conv2d with padding_mode='zeros'")
        self.first = nn.Conv2d(conv.in_channels, r_in, 1, bias=False)
        self.core = nn.Conv2d(
            r_in,
            r_out,
            conv.kernel_size,  # type: ignore[arg-type]
            stride=conv.stride,  # type: ignore[arg-type]
            padding=conv.padding,  # type: ignore[arg-type]
            dilation=conv.dilation,  # type: ignore[arg-type]
            bias=False,
        )
        self.last = nn.Conv2d(r_out, conv.out_channels, 1, bias=conv.bias is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.core(self.first(x)))


def svd_factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated SVD ``W ~= last @ first`` with the singular values split evenly.

    Args:
        weight: [out, in].
        rank: r, 1..min(out, in).

    Returns:
        (first [r, in], last [out, r]), float32; at full rank ``last @ first == W``
        up to rounding.
    """
    w = weight.detach().to(torch.float64)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = s[:rank].sqrt()
    first = root[:, None] * vh[:rank]
    last = u[:, :rank] * root[None, :]
    return first.to(torch.float32), last.to(torch.float32)


def _leading_vectors(unfolded: torch.Tensor, rank: int) -> torch.Tensor:
    u, _, _ = torch.linalg.svd(unfolded, full_matrices=False)
    return u[:, :rank]


def tucker2_factors(
    weight: torch.Tensor, r_in: int, r_out: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tucker-2 by HOSVD: factors from the leading left singular vectors of the unfoldings.

    Args:
        weight: [out, in, kh, kw].
        r_in: input rank, 1..in.
        r_out: output rank, 1..out.

    Returns:
        (first [r_in, in, 1, 1], core [r_out, r_in, kh, kw], last [out, r_out, 1, 1]),
        float32, with ``W ~= core x_0 U_out x_1 U_in``; exact at full ranks.
    """
    w = weight.detach().to(torch.float64)
    out_c, in_c = w.shape[0], w.shape[1]
    u_out = _leading_vectors(w.reshape(out_c, -1), r_out)  # [out, r_out]
    u_in = _leading_vectors(w.transpose(0, 1).reshape(in_c, -1), r_in)  # [in, r_in]
    core = torch.einsum("oikl,or,is->rskl", w, u_out, u_in)
    first = u_in.t().reshape(r_in, in_c, 1, 1)
    last = u_out.reshape(out_c, r_out, 1, 1)
    return first.to(torch.float32), core.to(torch.float32), last.to(torch.float32)


def linear_rank(out_features: int, in_features: int, *, rank: int | None = None, ratio: float | None = None) -> int:
    """The rank of a Linear [out, in] from ``rank`` (clipped to full rank) or ``ratio``."""
    full = min(out_features, in_features)
    if rank is not None:
        return max(1, min(int(rank), full))
    if ratio is None:
        raise CrestError("give a rank or a ratio")
    return max(1, min(full, math.ceil(float(ratio) * full)))


def conv_ranks(
    out_channels: int, in_channels: int, *, rank: int | None = None, ratio: float | None = None
) -> tuple[int, int]:
    """(r_in, r_out) of a Tucker-2 conv from ``rank`` (both, clipped) or ``ratio`` of each."""
    if rank is not None:
        return max(1, min(int(rank), in_channels)), max(1, min(int(rank), out_channels))
    if ratio is None:
        raise CrestError("give a rank or a ratio")
    r_in = max(1, min(in_channels, math.ceil(float(ratio) * in_channels)))
    r_out = max(1, min(out_channels, math.ceil(float(ratio) * out_channels)))
    return r_in, r_out


def _get_module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError as e:
        raise CrestError(f"the model has no layer '{name}'") from e


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = _get_module(model, parent_name) if parent_name else model
    setattr(parent, child, module)


def factorize_layer(
    model: nn.Module, name: str, *, rank: int | None = None, ratio: float | None = None
) -> dict[str, Any]:
    """Replace the Linear / Conv2d ``name`` of ``model`` by its low-rank factors, in place.

    Args:
        model: the model (changed in place; the new layers are on its device).
        name: the layer's module name (e.g. ``"fc1"``).
        rank, ratio: exactly one; see :func:`linear_rank` and :func:`conv_ranks`.

    Returns:
        The layer's structure entry (``{"kind": "linear", "rank": r}`` or
        ``{"kind": "conv2d", "ranks": [r_in, r_out]}``).

    Raises:
        CrestError: no such layer, or it is neither nn.Linear nor nn.Conv2d.
    """
    module = _get_module(model, name)
    weight = module.weight if hasattr(module, "weight") else None
    if type(module) is nn.Linear and weight is not None:
        r = linear_rank(module.out_features, module.in_features, rank=rank, ratio=ratio)
        new = LowRankLinear(module.in_features, module.out_features, r, bias=module.bias is not None)
        first, last = svd_factors(weight, r)
        entry: dict[str, Any] = {"kind": "linear", "rank": r}
        tensors = {"first": first, "last": last}
    elif type(module) is nn.Conv2d and weight is not None:
        r_in, r_out = conv_ranks(module.out_channels, module.in_channels, rank=rank, ratio=ratio)
        new = Tucker2Conv2d(module, r_in, r_out)
        first, core, last = tucker2_factors(weight, r_in, r_out)
        entry = {"kind": "conv2d", "ranks": [r_in, r_out]}
        tensors = {"first": first, "core": core, "last": last}
    else:
        raise CrestError(
            f"layer '{name}' is a {type(module).__name__}; low rank handles nn.Linear and nn.Conv2d"
        )
    device = weight.device
    new.to(device)
    with torch.no_grad():
        for part, value in tensors.items():
            getattr(new, part).weight.copy_(value.to(device))
        if module.bias is not None:
            new.last.bias.copy_(module.bias.detach())
    _set_module(model, name, new)
    return entry


def _rank_value(value: Any, full: int, where: str) -> int:
    """A stored rank, checked: an int in 1..``full`` (the layer's own dimension)."""
    if type(value) is not int:
        raise CrestError(f"{where}: a rank must be an integer, got {type(value).__name__}")
    if not 1 <= value <= full:
        raise CrestError(f"{where}: rank {value} is outside 1..{full}, the layer's dimension")
    return value


def apply_structure(model: nn.Module, structure: Mapping[str, Any]) -> nn.Module:
    """Rebuild a factorised structure (from artifact metadata) on a fresh model, in place.

    The factors get the right shapes; their values are left to ``load_state_dict``. Every
    entry is checked against the model before a layer is built: the layer exists and is
    of the recorded kind, and each rank is an integer within the layer's own dimensions,
    so a stored structure never sizes an allocation beyond the model's.

    Raises:
        CrestError: the structure names a missing layer, or is malformed.
    """
    if not isinstance(structure, Mapping):
        raise CrestError(f"the low-rank structure must be a mapping, got {type(structure).__name__}")
    for name, entry in structure.items():
        where = f"low-rank structure of '{str(name)[:200]}'"
        if not isinstance(name, str) or not name:
            raise CrestError(f"{where}: not a layer name")
        module = _get_module(model, name)
        kind = entry.get("kind") if isinstance(entry, Mapping) else None
        if kind == "linear" and type(module) is nn.Linear and set(entry) == {"kind", "rank"}:
            rank = _rank_value(entry["rank"], min(module.in_features, module.out_features), where)
            new: nn.Module = LowRankLinear(module.in_features, module.out_features, rank, bias=module.bias is not None)
        elif kind == "conv2d" and type(module) is nn.Conv2d and set(entry) == {"kind", "ranks"}:
            ranks = entry["ranks"]
            if not isinstance(ranks, list) or len(ranks) != 2:
                raise CrestError(f"{where}: 'ranks' must be [r_in, r_out]")
            r_in = _rank_value(ranks[0], module.in_channels, where)
            r_out = _rank_value(ranks[1], module.out_channels, where)
            new = Tucker2Conv2d(module, r_in, r_out)
        else:
            shown = repr(entry)[:200]
            raise CrestError(f"{where}: {shown} does not describe its {type(module).__name__}")
        new.to(next(module.parameters()).device)
        _set_module(model, name, new)
    return model
