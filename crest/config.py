"""The sweep file: YAML validated by pydantic models; every error names its field.

A sweep file looks like::

    study: lenet300
    workload: lenet300-mnist          # a built-in name or "module:function"
    n_trials: 40
    workers: 2
    seed: 0
    objectives: [size]                # or [size, accuracy] for a Pareto front
    constraints:
      max_accuracy_drop: 0.01         # in the workload's metric (top-1 accuracy: 0.01 = 1 point)
    stages:
      - type: prune
        layers:
          "fc*.weight": {quality: [0.2, 2.5]}   # threshold = quality x std(weights)
      - type: retrain
        epochs: 3
      - type: quantize
        layers:
          "*.weight": {bits: [2, 6]}

A ``lowrank`` stage (before any prune/quantize) factorises layers first, e.g.
``{type: lowrank, layers: {"fc1.weight": {ratio: [0.05, 0.5]}}}``; later globs then see
``fc1.first.weight`` and ``fc1.last.weight``.

A search-space value is a number (fixed), ``[low, high]`` (searched; ints for integer
fields), ``{low, high, log, step}`` or ``{choices: [...]}``.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Collection
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from crest.exceptions import ConfigError
from crest.format import DEFAULT_CHUNK_ENTRIES

__all__ = [
    "SweepConfig",
    "Stage",
    "LowRankStage",
    "PruneStage",
    "RetrainStage",
    "QuantizeStage",
    "EncodeStage",
    "EarlyStopping",
    "FloatParam",
    "IntParam",
    "load_sweep",
    "parse_sweep",
    "DEFAULT_STORAGE",
]

DEFAULT_STORAGE = "sqlite:///crest.db"
DEFAULT_ARTIFACT_INLINE_MAX = 256 * 1024  # bytes: larger artifacts go to the artifact store
DEFAULT_SAMPLER_WINDOW = 500  # finished trials the sampler reads at most (see crest.orchestrator._sampler_view)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FloatRange(_Strict):
    """A searched float in [low, high]."""

    low: float
    high: float
    log: bool = False
    step: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if not self.low <= self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("log scale needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("use either log or step, not both")
        return self


class IntRange(_Strict):
    """A searched integer in [low, high]."""

    low: int
    high: int
    log: bool = False
    step: int = Field(default=1, ge=1)

    @field_validator("low", "high", mode="before")
    @classmethod
    def _integers(cls, v: Any) -> Any:
        return _strict_number(v, integer=True)

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if not self.low <= self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("log scale needs low > 0")
        if self.log and self.step != 1:
            raise ValueError("use either log or step, not both")
        return self


class FloatChoices(_Strict):
    choices: list[float] = Field(min_length=1)


class IntChoices(_Strict):
    choices: list[int] = Field(min_length=1)


def _range_from_list(value: Any) -> Any:
    if isinstance(value, list | tuple):
        if len(value) != 2:
            raise ValueError("a range is [low, high]")
        return {"low": value[0], "high": value[1]}
    return value


FloatParam = Annotated[
    Union[float, FloatRange, FloatChoices], Field(union_mode="left_to_right")
]
IntParam = Annotated[Union[int, IntRange, IntChoices], Field(union_mode="left_to_right")]


def _strict_number(value: Any, *, integer: bool) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    if integer and isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"expected an integer, got {value}")
        return int(value)
    return value


class _ParamHolder(_Strict):
    """Converts [low, high] lists to ranges before validation."""

    @model_validator(mode="before")
    @classmethod
    def _lists_to_ranges(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: _range_from_list(v) for k, v in data.items()}
        return data


class PruneLayer(_ParamHolder):
    """Per-layer pruning: give ``quality`` (threshold = quality x std) or ``sparsity``."""

    quality: FloatParam | None = None
    sparsity: Union[FloatParam, Literal["sensitivity"], None] = None

    @model_validator(mode="after")
    def _one_rule(self) -> PruneLayer:
        if (self.quality is None) == (self.sparsity is None):
            raise ValueError("give exactly one of 'quality' or 'sparsity'")
        _check_bounds(self.quality, "quality", 0.0, 100.0)
        if self.sparsity != "sensitivity":
            _check_bounds(self.sparsity, "sparsity", 0.0, 1.0, high_open=True)
        return self


class SensitivityBounds(_Strict):
    """How ``sparsity: sensitivity`` turns a layer's sensitivity table into a search range.

    The range runs from the highest measured sparsity whose prune-only accuracy drop is at
    most ``low_drop`` to the highest whose drop is at most ``high_drop`` (retraining
    recovers much of a prune-only drop, so the upper end may lose more than the sweep's
    constraint allows).
    """

    low_drop: float = Field(default=0.005, ge=0.0)
    high_drop: float = Field(default=0.05, ge=0.0)

    @model_validator(mode="after")
    def _ordered(self) -> SensitivityBounds:
        if self.low_drop > self.high_drop:
            raise ValueError(f"low_drop ({self.low_drop}) must not exceed high_drop ({self.high_drop})")
        return self


class QuantizeLayer(_ParamHolder):
    """Per-layer k-means weight sharing with ``2**bits - 1`` shared nonzero values."""

    bits: IntParam

    @field_validator("bits", mode="before")
    @classmethod
    def _int_bits(cls, v: Any) -> Any:
        return _strict_number(v, integer=True)

    @model_validator(mode="after")
    def _bits_range(self) -> QuantizeLayer:
        _check_bounds(self.bits, "bits", 1, 16)
        return self


class LowRankLayer(_ParamHolder):
    """Per-layer low rank: give ``rank`` (an int) or ``ratio`` (a fraction of full rank).

    A Linear [out, in] becomes two Linears through ``rank`` (full rank: min(out, in));
    a Conv2d [out, in, k, k] becomes Tucker-2 (1x1 to r_in, kxk r_in->r_out, 1x1 to out)
    with r_in = min(rank, in), r_out = min(rank, out), or ceil(ratio x in / out).
    """

    rank: IntParam | None = None
    ratio: FloatParam | None = None

    @field_validator("rank", mode="before")
    @classmethod
    def _int_rank(cls, v: Any) -> Any:
        return _strict_number(v, integer=True) if v is not None else v

    @model_validator(mode="after")
    def _one_rule(self) -> LowRankLayer:
        if (self.rank is None) == (self.ratio is None):
            raise ValueError("give exactly one of 'rank' or 'ratio'")
        _check_bounds(self.rank, "rank", 1, 1_000_000)
        _check_bounds(self.ratio, "ratio", 0.0, 1.0, low_open=True)
        return self


class LowRankStage(_Strict):
    """Factorise the Linear / Conv2d weights that match each glob (SVD / Tucker-2).

    The factors are ordinary layers: ``fc1.weight`` becomes ``fc1.first.weight`` and
    ``fc1.last.weight`` (bias ``fc1.last.bias``); ``conv2.weight`` becomes
    ``conv2.first.weight``, ``conv2.core.weight`` and ``conv2.last.weight``. Later
    stages' globs match these names.
    """

    type: Literal["lowrank"]
    layers: dict[str, LowRankLayer] = Field(min_length=1)


class DistillOptions(_ParamHolder):
    """Knowledge distillation from the dense baseline's logits (Hinton et al.).

    loss = (1 - weight) x cross-entropy + weight x temperature^2 x KL(teacher || student),
    both softened by ``temperature``.
    """

    weight: FloatParam = 0.5
    temperature: FloatParam = 4.0

    @model_validator(mode="after")
    def _bounds(self) -> DistillOptions:
        _check_bounds(self.weight, "weight", 0.0, 1.0)
        _check_bounds(self.temperature, "temperature", 0.0, 100.0, low_open=True)
        return self


class PruneStage(_Strict):
    """Magnitude pruning of the layers that match each glob; masks are kept."""

    type: Literal["prune"]
    layers: dict[str, PruneLayer] = Field(min_length=1)
    sensitivity: SensitivityBounds = SensitivityBounds()


class RetrainStage(_ParamHolder):
    """Fine-tuning with the masks held: pruned weights stay zero.

    ``rounds`` > 1 (right after a prune stage): iterative pruning; that prune's
    per-layer sparsities are reached over the rounds (``schedule``: ``cubic`` (Zhu &
    Gupta) or ``linear`` in round / rounds), each round pruning by magnitude then
    retraining ``epochs`` epochs. ``dsd: true``: after the sparse phase, a dense phase
    (``dsd_epochs``, default ``epochs``, at the same lr) without the masks; a later prune
    stage then prunes the dense result, and without one the dense result is re-pruned
    at once to each layer's sparse-phase sparsity (new masks, same counts).
    ``distill``: add a distillation loss from the dense baseline's logits.
    """

    type: Literal["retrain"]
    epochs: IntParam = 2
    lr: FloatParam | None = None
    rounds: IntParam = 1
    schedule: Literal["cubic", "linear"] = "cubic"
    dsd: bool = False
    dsd_epochs: IntParam | None = None
    distill: DistillOptions | None = None

    @field_validator("epochs", "rounds", "dsd_epochs", mode="before")
    @classmethod
    def _ints(cls, v: Any) -> Any:
        return _strict_number(v, integer=True) if v is not None else v

    @model_validator(mode="after")
    def _bounds(self) -> RetrainStage:
        _check_bounds(self.epochs, "epochs", 0, 10_000)
        _check_bounds(self.lr, "lr", 0.0, 10.0, low_open=True)
        _check_bounds(self.rounds, "rounds", 1, 100)
        _check_bounds(self.dsd_epochs, "dsd_epochs", 0, 10_000)
        if self.dsd_epochs is not None and not self.dsd:
            raise ValueError("dsd_epochs needs dsd: true")
        return self


class QuantizeStage(_ParamHolder):
    """Per-layer k-means weight sharing (linear initialisation).

    ``finetune_epochs`` > 0: centroid fine-tuning (Deep Compression): each shared
    value moves by the sum of its weights' gradients (Adam, ``finetune_lr``, default
    the workload's lr / 10); zeros stay zero and values stay shared.
    """

    type: Literal["quantize"]
    layers: dict[str, QuantizeLayer] = Field(min_length=1)
    iterations: int = Field(default=25, ge=1, le=1000)
    finetune_epochs: IntParam = 0
    finetune_lr: FloatParam | None = None

    @field_validator("finetune_epochs", mode="before")
    @classmethod
    def _int_epochs(cls, v: Any) -> Any:
        return _strict_number(v, integer=True)

    @model_validator(mode="after")
    def _bounds(self) -> QuantizeStage:
        _check_bounds(self.finetune_epochs, "finetune_epochs", 0, 10_000)
        _check_bounds(self.finetune_lr, "finetune_lr", 0.0, 10.0, low_open=True)
        return self


class EncodeStage(_Strict):
    """Options of the crest encoding; ``index_bits: auto`` picks the smallest per layer."""

    type: Literal["encode"]
    index_bits: Literal["auto"] | Annotated[int, Field(ge=1, le=16)] = "auto"
    chunk_entries: int = Field(default=DEFAULT_CHUNK_ENTRIES, ge=32, le=65536)


Stage = Annotated[
    Union[LowRankStage, PruneStage, RetrainStage, QuantizeStage, EncodeStage],
    Field(discriminator="type"),
]


class Constraints(_Strict):
    """Feasibility: the accuracy drop vs the baseline, in the workload's metric units."""

    max_accuracy_drop: float = Field(default=0.01, ge=0.0)


class EarlyStopping(_Strict):
    """Stopping trials that cannot win (``early_stopping:`` in the sweep file).

    ``size_dominated``: once a trial's masks, ranks and bits are set, its artifact size is
    known (bounds, exact up to the header digits and codebook lengths); before retraining
    it is stopped when it cannot be smaller than the best feasible trial (objectives
    ``[size]``), or when a feasible trial is no larger and at least as accurate as it could
    be at best (``[size, accuracy]``).
    ``percentile`` (None, the default: off): after retraining epoch k, a trial whose score is
    below this percentile of the scores that trials which ended feasible had after epoch k
    of the same round is stopped, once ``n_startup_trials`` such trials exist. Off by
    default: a trial that passes the size rule is smaller than every feasible trial, and
    its curve usually runs below theirs even when it ends feasible.
    ``unreachable``: a trial that would still end more than ``margin`` (in the workload's
    metric; None: the constraint's ``max_accuracy_drop``) below the accuracy constraint
    even at the best rate of improvement seen from that epoch is stopped (also after
    ``n_startup_trials`` trials with a score there). The best of a few trials is a low
    estimate of what the next one may do, and the trials worth keeping end near the
    constraint, so the margin keeps the rule to the trials that are far off. No curve rule
    acts before epoch ``n_warmup_steps`` + 1.
    """

    size_dominated: bool = True
    percentile: float | None = Field(default=None, ge=0.0, le=100.0)
    unreachable: bool = True
    margin: float | None = Field(default=None, ge=0.0)
    n_startup_trials: int = Field(default=5, ge=1, le=10_000)
    n_warmup_steps: int = Field(default=0, ge=0, le=10_000)

    def scores_needed(self) -> bool:
        """True when a curve rule needs every epoch's score."""
        return self.percentile is not None or self.unreachable


class RayOptions(_Strict):
    """Where and how the workers run; ``gpus_per_worker`` may be a fraction (0.25: four
    workers share one GPU) or a whole number. ``local``: how a local Ray (no ``address``)
    starts: ``lean`` (default) without the processes crest does not use (the autoscaler
    monitor, the log monitor, the dashboard's API server), ``full`` as ``ray.init`` does."""

    address: str | None = None
    cpus_per_worker: float = Field(default=1.0, gt=0)
    gpus_per_worker: float = Field(default=0.0, ge=0, le=64)
    local: Literal["lean", "full"] = "lean"

    @field_validator("gpus_per_worker")
    @classmethod
    def _whole_above_one(cls, v: float) -> float:
        if v > 1 and v != int(v):
            raise ValueError(f"above 1 it must be a whole number of GPUs, got {v}")
        return v


class LatencyOptions(_Strict):
    """How each trial times its compressed model (``latency:`` in the sweep file; ``false`` turns it off)."""

    enabled: bool = True
    warmup: int = Field(default=2, ge=0, le=100)
    repeats: int = Field(default=5, ge=1, le=1000)


class SweepConfig(_Strict):
    """A whole sweep file."""

    study: str = Field(min_length=1, max_length=200)
    storage: str | None = None
    workload: str = Field(min_length=1)
    n_trials: int = Field(ge=1, le=1_000_000)
    workers: int = Field(default=1, ge=1, le=4096)
    seed: int = Field(default=0, ge=0)
    sampler: Literal["tpe", "random"] = "tpe"
    # finished trials the sampler reads at most (the best and the most recent); null: all
    sampler_window: int | None = Field(default=DEFAULT_SAMPLER_WINDOW, ge=100, le=1_000_000)
    objectives: list[Literal["size", "accuracy", "latency"]] = Field(default=["size"], min_length=1)
    constraints: Constraints = Constraints()
    stages: list[Stage] = Field(min_length=1)
    max_retries: int = Field(default=2, ge=0, le=100)
    max_failures: int | None = Field(default=None, ge=0)
    early_stopping: EarlyStopping | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    latency: LatencyOptions = LatencyOptions()
    ray: RayOptions = RayOptions()

    @field_validator("latency", mode="before")
    @classmethod
    def _latency_switch(cls, v: Any) -> Any:
        return {"enabled": v} if isinstance(v, bool) else v
    # where artifacts larger than artifact_inline_max (bytes) live: a directory or an fsspec URL
    artifacts: str | None = Field(default=None, max_length=1000)
    artifact_inline_max: int = Field(default=DEFAULT_ARTIFACT_INLINE_MAX, ge=0, le=64 * 1024 * 1024)

    @field_validator("artifacts")
    @classmethod
    def _store_url(cls, v: str | None) -> str | None:
        if v is None:
            return None
        from crest.storage._artifacts import normalize_store_url

        return normalize_store_url(v)

    @field_validator("study")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v):
            raise ValueError("use letters, digits, '.', '_' and '-' (starting with a letter or digit)")
        return v

    @field_validator("objectives")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("objectives must not repeat")
        if "size" not in v:
            raise ValueError("objectives must include 'size'")
        return v

    @model_validator(mode="after")
    def _stage_order(self) -> SweepConfig:
        kinds = [s.type for s in self.stages]
        if kinds.count("encode") > 1:
            raise ValueError("stages: at most one 'encode' stage")
        if "encode" in kinds and kinds[-1] != "encode":
            raise ValueError("stages: 'encode' must be the last stage")
        if kinds.count("quantize") > 1:
            raise ValueError("stages: at most one 'quantize' stage")
        if kinds.count("lowrank") > 1:
            raise ValueError("stages: at most one 'lowrank' stage")
        if "lowrank" in kinds:
            first = kinds.index("lowrank")
            if any(k in ("prune", "quantize") for k in kinds[:first]):
                raise ValueError("stages: 'lowrank' must come before every prune and quantize stage")
        return self

    @model_validator(mode="after")
    def _devices(self) -> SweepConfig:
        if self.device == "cuda" and self.ray.gpus_per_worker <= 0:
            raise ValueError("device: 'cuda' needs ray.gpus_per_worker > 0 (a worker holds no GPU otherwise)")
        if "latency" in self.objectives and not self.latency.enabled:
            raise ValueError("objectives: 'latency' needs latency measured (latency.enabled: true)")
        if "latency" in self.objectives and self.early_stopping is not None and self.early_stopping.size_dominated:
            raise ValueError("objectives: 'latency' cannot go with early_stopping.size_dominated "
                             "(a larger trial may be faster); set it to false")
        return self

    def replace(self, *, source: str = "", **changes: Any) -> SweepConfig:
        """A copy with top-level keys changed (None leaves a key as it is), validated again.

        ``ray_address`` sets ``ray.address``.

        Raises:
            ConfigError: a changed value is invalid.
        """
        data = self.model_dump(mode="json")
        address = changes.pop("ray_address", None)
        if address is not None:
            data["ray"] = {**data["ray"], "address": address}
        return parse_sweep(data, source=source or f"study '{self.study}'", overrides=changes)

    def to_json(self) -> str:
        """The config as canonical JSON (sorted keys), as stored with a study: without the
        database URL, which may hold a password and is always given anew."""
        return json.dumps(self.model_dump(mode="json", exclude={"storage"}), sort_keys=True)

    def search_identity(self) -> dict[str, Any]:
        """The parts that define the search; a resumed study must keep them."""
        data = self.model_dump(mode="json")
        for key in ("n_trials", "workers", "storage", "ray", "max_failures", "study", "device", "latency",
                    "sampler_window"):
            data.pop(key, None)
        return data


def _check_bounds(
    param: Any,
    field: str,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    if param is None:
        return
    if isinstance(param, FloatRange | IntRange):
        values = [param.low, param.high]
    elif isinstance(param, FloatChoices | IntChoices):
        values = list(param.choices)
    else:
        values = [param]
    for v in values:
        bad = v < low or v > high or (low_open and v == low) or (high_open and v == high)
        if bad:
            lo = "(" if low_open else "["
            hi = ")" if high_open else "]"
            raise ValueError(f"{field}={v} is outside {lo}{low}, {high}{hi}")


_STAGE_TAGS = {"lowrank", "prune", "retrain", "quantize", "encode"}
_UNION_TAGS = {"float", "int", "FloatRange", "IntRange", "FloatChoices", "IntChoices"}


def _error_priority(error: Any) -> int:
    kind = error["type"]
    if kind == "value_error":
        return 0
    if kind in ("extra_forbidden", "missing", "union_tag_invalid"):
        return 1
    return 2


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    prev: Any = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _UNION_TAGS or str(part).startswith("function-"):
            pass
        elif isinstance(prev, int) and part in _STAGE_TAGS:
            pass
        else:
            out += f".{part}" if out else str(part)
        prev = part
    return out


def _format_error(err: ValidationError, source: str) -> str:
    errors = err.errors()
    first = min(errors, key=_error_priority)
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "missing":
        msg = "required key is missing"
    loc = _format_loc(tuple(first["loc"]))
    where = f"{source}: " if source else ""
    return f"{where}{loc or '<root>'}: {msg}"


def parse_sweep(
    data: Any, *, source: str = "", overrides: dict[str, Any] | None = None
) -> SweepConfig:
    """Validate a sweep mapping (already parsed YAML) with optional top-level overrides.

    Raises:
        ConfigError: one line naming the bad field.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source or 'sweep'}: the file must be a mapping of keys to values")
    merged = dict(data)
    for key, value in (overrides or {}).items():
        if value is not None:
            merged[key] = value
    try:
        return SweepConfig.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(_format_error(e, source)) from e


def load_sweep(path: str | Path, *, overrides: dict[str, Any] | None = None) -> tuple[SweepConfig, str]:
    """Read and validate a sweep file.

    Returns:
        The validated config and the file's text as given.

    Raises:
        ConfigError: unreadable file, bad YAML or an invalid field.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ConfigError(f"{p}: no such sweep file") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read the sweep file ({e})") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(f"{p}: {problem}{where}") from e
    return parse_sweep(data, source=str(p), overrides=overrides), text


GLOB_CHARACTERS = frozenset("*?[")
"""Characters that make a layer pattern a glob; a pattern without them names one parameter."""


def is_glob(pattern: str) -> bool:
    """True when ``pattern`` holds a glob character (``*``, ``?`` or ``[``)."""
    return any(c in GLOB_CHARACTERS for c in pattern)


def match_layers(pattern: str, names: list[str], *, eligible: Collection[str] | None = None) -> list[str]:
    """Parameter names matching a layer pattern, in model order.

    Args:
        pattern: a glob (``fc*.weight``) or an exact parameter name.
        names: the model's parameter names.
        eligible: the names a glob may match (None: all); a pattern without glob
            characters matches the parameter it names whether eligible or not.
    """
    if not is_glob(pattern):
        return [n for n in names if n == pattern]
    return [n for n in names if fnmatch.fnmatchcase(n, pattern) and (eligible is None or n in eligible)]
