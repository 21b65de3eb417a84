"""What the driver needs of a model: its parameters' names and shapes, which of them are
prunable or embedding tables, its dense float32 size and its state's size. Plain data, no torch: a new
local study's driver gets it from the process that trains the baseline, as JSON, and
never builds the model itself."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crest.exceptions import SweepError

if TYPE_CHECKING:
    import torch

__all__ = ["MAX_SUMMARY_BYTES", "ModelSummary"]

MAX_SUMMARY_BYTES = 64 << 20  # a summary's JSON: ~100 bytes per parameter tensor
MAX_STATE_BYTES = 1 << 40  # 1 TiB: no model crest trains on one host comes near
_MAX_DIMS = 8


@dataclass(frozen=True)
class ModelSummary:
    """A model's parameters, as the plan and the driver read them.

    Attributes:
        shapes: parameter name -> shape, in the model's order.
        prunable: names of the weights of 2 or more dimensions (see ``prunable_layers``).
        embeddings: names of the embedding tables' weights (see ``embedding_tables``).
        dense_bytes: the model's parameters as float32, in bytes.
        state_bytes: the model's ``state_dict`` (parameters and buffers) as stored, in
            bytes: what bounds the baseline's artifact.
    """

    shapes: dict[str, tuple[int, ...]]
    prunable: list[str]
    embeddings: list[str]
    dense_bytes: int
    state_bytes: int

    @classmethod
    def of(cls, model: torch.nn.Module) -> ModelSummary:
        """The summary of a built model (on any device). An embedding table's weight tied to
        another module (a head registered first, say) is listed under the name the model's
        parameters give it, so that it stays an embedding table."""
        from crest.tasks._pipeline import dense_fp32_bytes
        from crest.tasks._plan import embedding_tables
        from crest.tasks._sensitivity import prunable_layers

        return cls(
            shapes={name: tuple(int(d) for d in p.shape) for name, p in model.named_parameters()},
            prunable=prunable_layers(model),
            embeddings=embedding_tables(model),
            dense_bytes=dense_fp32_bytes(model),
            state_bytes=sum(t.numel() * t.element_size() for t in model.state_dict().values()),
        )

    def to_json(self) -> bytes:
        """The summary as UTF-8 JSON (what :meth:`from_json` reads)."""
        shapes = [[name, list(shape)] for name, shape in self.shapes.items()]
        doc = {"shapes": shapes, "prunable": self.prunable, "embeddings": self.embeddings,
               "dense_bytes": self.dense_bytes, "state_bytes": self.state_bytes}
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ModelSummary:
        """Read and check a summary written by :meth:`to_json`.

        Raises:
            SweepError: ``data`` is over :data:`MAX_SUMMARY_BYTES`, not such JSON, or
                inconsistent (a name listed as prunable that is not a parameter, a
                negative size, a size over :data:`MAX_STATE_BYTES`, ...).
        """
        if len(data) > MAX_SUMMARY_BYTES:
            raise SweepError(f"the model's summary is {len(data)} bytes, over {MAX_SUMMARY_BYTES}")
        try:
            doc = json.loads(data)
            shapes = {_name(name): _shape(shape) for name, shape in doc["shapes"]}
            prunable = [_name(n) for n in doc["prunable"]]
            embeddings = [_name(n) for n in doc["embeddings"]]
            dense_bytes, state_bytes = doc["dense_bytes"], doc["state_bytes"]
        except (ValueError, KeyError, TypeError, RecursionError) as e:
            raise SweepError(f"the model's summary is malformed: {type(e).__name__}: {e}") from e
        unknown = [n for n in prunable + embeddings if n not in shapes]
        if unknown:
            raise SweepError(f"the model's summary names '{unknown[0]}', which is not one of its parameters")
        elements = sum(math.prod(s) for s in shapes.values())
        if type(dense_bytes) is not int or dense_bytes != 4 * elements or dense_bytes > MAX_STATE_BYTES:
            raise SweepError(f"the model's summary gives {dense_bytes!r:.40} dense bytes for {elements} elements")
        if type(state_bytes) is not int or not 0 <= state_bytes <= MAX_STATE_BYTES:
            raise SweepError(f"the model's summary gives a state of {state_bytes!r:.40} bytes")
        return cls(shapes, prunable, embeddings, dense_bytes, state_bytes)


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"a parameter name must be a non-empty string, not {value!r:.40}")
    return value


def _shape(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > _MAX_DIMS:
        raise TypeError(f"a shape must be a list of at most {_MAX_DIMS} sizes, not {value!r:.40}")
    if not all(type(d) is int and d >= 0 for d in value):
        raise TypeError(f"a shape's sizes must be non-negative integers, not {value!r:.40}")
    return tuple(value)
