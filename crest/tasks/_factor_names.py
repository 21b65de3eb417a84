"""Parameter names of factorised layers: plain strings, no torch (the driver resolves
plans with them without importing torch)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["factor_names", "factorised_param_names"]


def factor_names(layer: str, ndim: int, has_bias: bool) -> list[str]:
    """Parameter names of a factorised layer, in model order.

    Args:
        layer: the module name (``"fc1"``).
        ndim: the original weight's ndim (2: Linear, 4: Conv2d).
        has_bias: whether the original layer has a bias.
    """
    parts = ["first", "last"] if ndim == 2 else ["first", "core", "last"]
    names = [f"{layer}.{p}.weight" for p in parts]
    if has_bias:
        names.append(f"{layer}.last.bias")
    return names


def factorised_param_names(
    names: Sequence[str], shapes: Mapping[str, Sequence[int]], layers: Sequence[str]
) -> list[str]:
    """The model's parameter names after factorising ``layers`` (weight names), in order."""
    chosen = {n.removesuffix(".weight") for n in layers}
    out: list[str] = []
    done: set[str] = set()
    for name in names:
        module = name.rpartition(".")[0]
        if module in chosen:
            if module not in done:
                done.add(module)
                ndim = len(shapes[f"{module}.weight"])
                out.extend(factor_names(module, ndim, f"{module}.bias" in shapes))
            continue
        out.append(name)
    return out
