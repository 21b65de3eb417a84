"""What one trial does: low rank, prune, retrain, quantize, encode, then score the decoded bytes.

Stage semantics beyond the plain ones:

* ``retrain`` with ``rounds`` R > 1 right after a ``prune`` stage: the prune is undone
  and its per-layer sparsities are reached over R rounds (sparsity after round r =
  start + (final - start) x :func:`prune_schedule`), each round pruning the smallest
  current magnitudes (masks only shrink) then retraining ``epochs`` epochs. Without a
  prune right before, the R rounds simply retrain R times.
* ``retrain`` with ``dsd``: after the sparse phase, a dense phase trains every weight
  (pruned ones restart from zero) at the stage's lr. If a later ``prune`` stage follows, the
  dense result goes on to it; otherwise each masked layer is re-pruned at once by
  magnitude to its sparse-phase sparsity, so the mask changes but the size does not.
* ``quantize`` with ``finetune_epochs``: centroid fine-tuning (gradients summed per
  shared value).
* The evaluation rebuilds the model from the artifact alone (its low-rank structure
  from the metadata), exactly as :func:`load_artifact` (``crest.load``) does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from crest import gpu
from crest.exceptions import CrestError, WorkloadError
from crest.format import DEFAULT_CHUNK_ENTRIES
from crest.tasks._device import (
    device_name,
    gpu_peak_bytes,
    peak_rss_bytes,
    reset_gpu_peak,
    resolve_device,
    synchronize,
)
from crest.tasks._early_size import SizeBounds, size_bounds, structure_of
from crest.tasks._encode_plan import plan_encoding
from crest.tasks._finetune import finetune_centroids
from crest.tasks._fit import FitContext, fit_epochs, label_tensors, run_fit
from crest.tasks._latency import LatencyOptions, measure_latency
from crest.tasks._lowrank import apply_structure, factorize_layer
from crest.tasks._outcome import TrialOutcome
from crest.tasks._plan_types import StagePlan, TrialPlan
from crest.tasks._prune import magnitude_mask, sparsity_mask
from crest.tasks._quantize import cluster_weights
from crest.tasks._resolve import get_workload
from crest.tasks._steps import (
    ScoreReport,
    SizeReport,
    iterative_rounds,
    quantized_bits,
    size_point,
    training_schedule,
)
from crest.tasks._train import evaluate, train, train_epochs
from crest.tasks._workload import Workload

__all__ = [
    "TrialOutcome",
    "TrialRunner",
    "check_fits",
    "decoded_model",
    "dense_fp32_bytes",
    "encode_state",
    "load_artifact",
    "model_from_tensors",
    "prune_schedule",
    "state_to_numpy",
    "train_baseline",
]

logger = logging.getLogger(__name__)

# offsets of a trial's seed for the stages that train after its prune rounds (round r
# trains with seed + r), primes far above any round count so no two stages share a seed
DSD_SEED_OFFSET = 7919
FINETUNE_SEED_OFFSET = 104729




def state_to_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's state dict as CPU NumPy arrays (copies), in state-dict order."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def check_fits(model: nn.Module, shapes: dict[str, tuple[int, ...]], workload_name: str) -> None:
    """Check stored tensor names and shapes against a model's state dict, before decoding.

    Args:
        model: the (possibly factorised) model the tensors are for.
        shapes: name -> shape, as an artifact's header declares them.
        workload_name: for messages.

    Raises:
        CrestError: a name the model lacks, a model tensor not stored, or another shape.
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    where = f"the artifact does not fit workload '{workload_name}'"
    missing = [k for k in expected if k not in shapes]
    unknown = [k[:200] for k in shapes if k not in expected]
    if missing or unknown:
        logger.info("%s: missing %d tensors, %d unknown", where, len(missing), len(unknown))
        parts = [f"it lacks {', '.join(missing[:5])}"] if missing else []
        parts += [f"the model has no {', '.join(unknown[:5])}"] if unknown else []
        raise CrestError(f"{where}: {'; '.join(parts)}")
    for name, shape in shapes.items():
        if tuple(shape) != expected[name]:
            logger.info("%s: tensor %s has shape %s", where, name[:200], list(shape)[:8])
            raise CrestError(
                f"{where}: tensor '{name}' has shape {list(shape)[:8]} in the artifact but "
                f"{list(expected[name])} in the model"
            )


def model_from_tensors(
    workload: Workload,
    tensors: dict[str, np.ndarray],
    *,
    structure: dict[str, Any] | None = None,
) -> nn.Module:
    """A fresh model of the workload with ``tensors`` loaded (strict: names and shapes must match).

    Args:
        workload: builds the model.
        tensors: name -> array, the model's state dict.
        structure: the low-rank structure (an artifact's ``metadata["lowrank"]``) to
            rebuild before loading; None or empty for an unfactorised model.

    Returns:
        The model on the CPU, in eval mode.

    Raises:
        CrestError: the tensors (or structure) do not fit the workload's model.
    """
    model = workload.build_model()
    if structure:
        apply_structure(model, structure)
    check_fits(model, {k: tuple(v.shape) for k, v in tensors.items()}, workload.name)
    return _load_state(model, tensors, workload.name)


def _load_state(model: nn.Module, tensors: dict[str, Any], workload_name: str) -> nn.Module:
    """Load NumPy arrays (copied) or torch tensors (any device) into ``model``, strictly."""
    state = {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(np.array(v, copy=True))
             for k, v in tensors.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CrestError(f"the artifact does not fit workload '{workload_name}': {first}") from e
    model.eval()
    return model


def load_artifact(
    source: str | Path | bytes | bytearray | memoryview,
    workload: str | Workload | None = None,
) -> nn.Module:
    """Rebuild the model stored in a crest artifact (factorised layers included).

    Nothing the file says is trusted beyond data: the workload it records must be a
    built-in (a ``module:function`` is imported only when the caller passes it), and its
    header's names and shapes and its low-rank ranks are checked against the workload's
    model before a single tensor is decoded, so decoding allocates no more than the
    model's own tensors.

    Args:
        source: a file path or the artifact's bytes.
        workload: the workload (name or object) whose model the artifact holds; None
            takes the name recorded in the artifact's metadata (built-ins only).

    Returns:
        The model with the decoded tensors, on the CPU, in eval mode.

    Raises:
        FormatError: the artifact is malformed.
        WorkloadError: no workload given or recorded, the recorded one is not a
            built-in, or it does not resolve.
        CrestError: the tensors (or the low-rank structure) do not fit the workload's model.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        blob = bytes(source)
    else:
        try:
            blob = Path(source).read_bytes()
        except OSError as e:
            raise CrestError(f"{source}: cannot read the artifact ({e})") from e
    header = gpu.read_header(blob)
    meta = header.metadata
    if workload is None:
        name = meta.get("workload")
        if not isinstance(name, str):
            raise WorkloadError("the artifact records no workload; pass workload=")
        wl = get_workload(name, allow_import=False)  # a file selects built-ins only
    elif isinstance(workload, str):
        wl = get_workload(workload)  # the caller's own choice
    elif isinstance(workload, Workload):
        wl = workload
    else:
        raise WorkloadError(f"workload must be a name or a crest.tasks.Workload, got {type(workload).__name__}")
    structure = meta.get("lowrank") or None
    if structure is not None and not isinstance(structure, dict):
        raise CrestError("the artifact's low-rank structure is not a mapping")
    model = wl.build_model()
    if structure:
        apply_structure(model, structure)
    check_fits(model, {t.name: t.shape for t in header.tensors}, wl.name)
    return _load_state(model, gpu.decode(blob), wl.name)


def dense_fp32_bytes(model: nn.Module) -> int:
    """Bytes of all parameters stored as dense fp32 (the denominator of the ratio)."""
    return 4 * sum(p.numel() for p in model.parameters())


def encode_state(
    tensors: dict[str, np.ndarray],
    *,
    code_bits: dict[str, int] | None = None,
    index_bits: int | str = "auto",
    chunk_entries: int = DEFAULT_CHUNK_ENTRIES,
    metadata: dict[str, Any] | None = None,
) -> bytes:
    """Encode a state dict with the smallest exact per-tensor options.

    Float ``-0.0`` (what masking a negative weight leaves) is stored as ``+0.0``, so that
    pruned weights cost nothing in the sparse encoding.
    """
    tensors = {k: _positive_zeros(v) for k, v in tensors.items()}
    overrides = plan_encoding(tensors, code_bits=code_bits, index_bits=index_bits)
    return gpu.encode(
        tensors, overrides=overrides, chunk_entries=chunk_entries, metadata=metadata or {}
    )


def _positive_zeros(array: np.ndarray) -> np.ndarray:
    if array.dtype.kind == "f" and array.size and bool(np.signbit(array[array == 0]).any()):
        array = np.where(array == 0, np.zeros((), dtype=array.dtype), array)
    return array


def train_baseline(
    workload: Workload, *, seed: int, device: torch.device | str = "cpu",
    on_model: Callable[[nn.Module], None] | None = None,
) -> tuple[bytes, float]:
    """Train the dense baseline (the workload's ``fit`` when it has one) and encode it exactly.

    Args:
        workload: the model and data.
        seed: seeds torch and the shuffle.
        device: where it trains and is scored (``auto`` resolves as a worker does).
        on_model: called with the built model, on ``device``, before it trains.

    Returns:
        (artifact bytes, the baseline's score measured on the decoded artifact).
    """
    dev = resolve_device(device)
    torch.manual_seed(seed)
    model = workload.build_model().to(dev)
    if on_model is not None:
        on_model(model)
    if workload.fit is None:
        train(model, workload, epochs=workload.baseline_epochs, lr=workload.lr, seed=seed)
    else:
        run_fit(model, FitContext(epochs=workload.baseline_epochs, lr=workload.lr, device=dev, seed=seed,
                                  stage="baseline", workload=workload))
    blob = encode_state(state_to_numpy(model), metadata={"workload": workload.name, "role": "baseline"})
    accuracy = evaluate(decoded_model(workload, blob, dev), workload)
    return blob, accuracy


def decoded_model(
    workload: Workload, blob: bytes, device: torch.device, *, structure: dict[str, Any] | None = None
) -> nn.Module:
    """The artifact's model on ``device``, its tensors decoded there: on a CUDA device by
    crest's GPU decoder (``crest.gpu.decode(device="torch:cuda:N")``, straight into device
    memory), on the CPU by the NumPy reference decoder. Both decodes are bit-exact.

    Args:
        workload: builds the model.
        blob: the artifact (its names and shapes are checked before decoding).
        device: ``cpu`` or ``cuda:N``.
        structure: the low-rank structure to rebuild first (None: unfactorised).

    Raises:
        CrestError: the tensors do not fit the workload's model.
    """
    if device.type != "cuda":
        return model_from_tensors(workload, gpu.decode(blob), structure=structure)
    model = workload.build_model()
    if structure:
        apply_structure(model, structure)
    check_fits(model, {t.name: t.shape for t in gpu.read_header(blob).tensors}, workload.name)
    model.to(device)
    return _load_state(model, gpu.decode(blob, device=f"torch:cuda:{device.index or 0}"), workload.name)


class TrialRunner:
    """Runs trials of one plan on one workload; holds the baseline (loaded once).

    Plain Python: the orchestrator wraps it in a Ray actor.
    """

    def __init__(
        self,
        workload: Workload,
        plan: TrialPlan,
        baseline_blob: bytes,
        baseline_accuracy: float,
        *,
        device: torch.device | str = "cpu",
        latency: LatencyOptions | None = None,
    ) -> None:
        """Args: ``device``: where every stage runs (``auto``: cuda when this process holds
        a GPU); ``latency``: how each trial times its model (None: not timed)."""
        self.workload = workload
        self.plan = plan
        self.device = resolve_device(device)
        self.latency = latency if latency is not None and latency.enabled else None
        model = workload.build_model()
        # the baseline comes from the database: its shapes are checked before it is decoded
        check_fits(model, {t.name: t.shape for t in gpu.read_header(baseline_blob).tensors}, workload.name)
        self.baseline = gpu.decode(baseline_blob)
        self.baseline_accuracy = baseline_accuracy
        self.dense_bytes = dense_fp32_bytes(model)
        self._teacher: nn.Module | None = None

    def teacher(self) -> nn.Module:
        """The dense baseline model (built once), the distillation teacher."""
        if self._teacher is None:
            self._teacher = model_from_tensors(self.workload, self.baseline).to(self.device)
            for p in self._teacher.parameters():
                p.requires_grad_(False)
        return self._teacher

    def run(self, params: dict[str, Any], *, seed: int, metadata: dict[str, Any] | None = None) -> TrialOutcome:
        """Run the stages with ``params`` (every parameter of the plan, by name).

        Raises:
            CrestError: a parameter is missing.
        """
        trial = self.steps(params, seed=seed, metadata=metadata)
        while True:
            try:
                next(trial)
            except StopIteration as done:
                outcome: TrialOutcome = done.value
                return outcome

    def steps(
        self,
        params: dict[str, Any],
        *,
        seed: int,
        metadata: dict[str, Any] | None = None,
        sizes: bool = False,
        scores: bool = False,
    ) -> Generator[SizeReport | ScoreReport, None, TrialOutcome]:
        """:meth:`run` one step at a time, for a driver that may stop the trial early.

        Yields, with ``sizes``, one :class:`SizeReport` as soon as the masks, ranks and
        code widths are final (before the training that follows); with ``scores``, a
        :class:`ScoreReport` after every retraining epoch (the in-memory model's score).
        Returns the :class:`TrialOutcome`; draining it gives the same artifact as :meth:`run`.

        Raises:
            CrestError: a parameter is missing.
        """
        start = time.perf_counter()
        missing = [p.name for p in self.plan.params if p.name not in params]
        if missing:
            raise CrestError(f"trial parameters missing: {', '.join(missing)}")
        torch.manual_seed(seed)
        reset_gpu_peak(self.device)
        state = _TrialState(model_from_tensors(self.workload, self.baseline).to(self.device), scores=scores,
                            steps=len(training_schedule(self.plan, params)))
        point = size_point(self.plan, params) if sizes else None
        if point == (-1, False):
            yield self._size_report(state, params, metadata)
        stages = self.plan.stages
        for i, stage in enumerate(stages):
            t0 = time.perf_counter()
            if stage.type == "lowrank":
                self._lowrank(state, stage, params)
            elif stage.type == "prune":
                self._prune(state, stage, params)
            elif stage.type == "retrain":
                prune_follows = any(s.type == "prune" for s in stages[i + 1 :])
                sized = (lambda: self._size_report(state, params, metadata)) if point == (i, True) else None
                yield from self._retrain(state, i, params, seed, prune_follows, sized)
            elif stage.type == "quantize":
                self._quantize(state, stage, params, seed)
            if stage.type in ("lowrank", "prune"):
                state.add("prune", t0, self.device)
            if point == (i, False):
                yield self._size_report(state, params, metadata)
        return self._finish(state, metadata, start)

    def _meta(self, state: _TrialState, metadata: dict[str, Any] | None) -> dict[str, Any]:
        meta: dict[str, Any] = {"workload": self.workload.name, **(metadata or {})}
        if state.structure:
            meta["lowrank"] = state.structure
        return meta

    def _size_report(self, state: _TrialState, params: dict[str, Any], metadata: dict[str, Any] | None) -> SizeReport:
        """Bounds on the artifact's size from the structure as it stands (masks final)."""
        t0 = time.perf_counter()
        bits = quantized_bits(self.plan, params)
        structures = [structure_of(name, array, code_bits=bits.get(name))
                      for name, array in state_to_numpy(state.model).items()]
        bounds = size_bounds(structures, index_bits=self.plan.index_bits, chunk_entries=self.plan.chunk_entries,
                             metadata=self._meta(state, metadata))
        state.bounds = bounds
        state.add("prune", t0, self.device)
        return SizeReport(bounds.low, bounds.high, state.steps, step=state.step)

    def _finish(self, state: _TrialState, metadata: dict[str, Any] | None, start: float) -> TrialOutcome:
        """Encode, decode on the trial's device (see :func:`decoded_model`), and score the
        decoded bytes; then time the model (when asked)."""
        t0 = time.perf_counter()
        tensors = state_to_numpy(state.model)
        blob = encode_state(
            tensors,
            code_bits=state.code_bits,
            index_bits=self.plan.index_bits,
            chunk_entries=self.plan.chunk_entries,
            metadata=self._meta(state, metadata),
        )
        state.add("encode", t0, self.device)
        t0 = time.perf_counter()
        rebuilt = decoded_model(self.workload, blob, self.device, structure=state.structure)
        state.add("decode", t0, self.device)
        t0 = time.perf_counter()
        accuracy = evaluate(rebuilt, self.workload)
        state.add("evaluate", t0, self.device)
        manifest = gpu.inspect(blob)
        # the encoded values (what the artifact decodes to, bit for bit, but -0.0 stored as +0.0)
        layers = _layer_report(tensors, manifest, state.code_bits, state.structure)
        size = len(blob)
        bounds = state.bounds
        if bounds is not None and not bounds.holds(size):
            logger.warning("the artifact is %d bytes, outside the bounds %d..%d reported before retraining",
                           size, bounds.low, bounds.high)
        return TrialOutcome(
            blob=blob,
            accuracy=accuracy,
            accuracy_drop=self.baseline_accuracy - accuracy,
            size_bytes=size,
            ratio=self.dense_bytes / size,
            layers=layers,
            seconds=time.perf_counter() - start,
            transport_bytes=int(manifest["transport_bytes"]),
            size_bounds=None if bounds is None else (bounds.low, bounds.high),
            device=device_name(self.device),
            details=self._details(state, rebuilt, blob),
        )

    def _details(self, state: _TrialState, rebuilt: nn.Module, blob: bytes) -> dict[str, Any]:
        """The trial's small JSON of measurements: timings, latency, warnings, memory peaks."""
        details: dict[str, Any] = {"timings": {k: round(v, 4) for k, v in state.timings.items()}}
        if self.latency is not None:
            try:
                details["latency"] = measure_latency(rebuilt, blob, self.workload, state.structure, self.device,
                                                     self.latency)
            except (CrestError, RuntimeError, ValueError, TypeError) as e:  # the score stands without it
                logger.warning("latency not measured: %s: %s", type(e).__name__, e)
                details["latency"] = {"error": f"{type(e).__name__}: {e}"[:300]}
        if state.warnings:
            details["fit_warning"] = state.warnings[0]
        details["peak_rss_bytes"] = peak_rss_bytes()
        peak = gpu_peak_bytes(self.device)
        if peak is not None:
            details["gpu_peak_bytes"] = peak
        return details

    def _epochs(self, state: _TrialState, epochs: Iterator[int]) -> Iterator[ScoreReport]:
        """Run training epochs (``epochs`` yields the count done; a user's fit yields once,
        at the end); after each yield, a score when the trial reports them. Only the time
        spent running counts as ``train``/``evaluate``, not the time the trial waits."""
        done = 0
        while True:
            t0 = time.perf_counter()
            count = next(epochs, None)
            state.add("train", t0, self.device)
            if count is None:
                return
            state.step += count - done
            done = count
            if state.scores:
                t0 = time.perf_counter()
                score = evaluate(state.model, self.workload)
                state.add("evaluate", t0, self.device)
                yield ScoreReport(state.step, score, state.steps)

    def _train(self, state: _TrialState, *, stage: str, epochs: int, lr: float, seed: int,
               masks: dict[str, torch.Tensor] | None, distill: dict[str, Any]) -> Iterator[int]:
        """The epochs of one training phase: crest's loop (one yield per epoch), or the
        workload's ``fit`` (one yield when it returns; see :func:`crest.tasks.run_fit`)."""
        if self.workload.fit is None:
            return train_epochs(state.model, self.workload, epochs=epochs, lr=lr, seed=seed, masks=masks, **distill)
        ctx = FitContext(epochs=epochs, lr=lr, device=self.device, seed=seed, stage=stage, workload=self.workload,
                         masks=dict(masks or {}), **distill)
        return fit_epochs(state.model, ctx, state.warnings)

    # ------------------------------------------------------------------ stages

    def _lowrank(self, state: _TrialState, stage: StagePlan, params: dict[str, Any]) -> None:
        with torch.no_grad():
            for weight_name, (rule, pname) in stage.layers.items():
                layer = weight_name.removesuffix(".weight")
                value = params[pname]
                kwargs = {"rank": int(value)} if rule == "rank" else {"ratio": float(value)}
                state.structure[layer] = factorize_layer(state.model, layer, **kwargs)
        # masks of factorised layers no longer apply (the config puts lowrank first)
        names = set(dict(state.model.named_parameters()))
        state.masks = {n: m for n, m in state.masks.items() if n in names}

    def _prune(self, state: _TrialState, stage: StagePlan, params: dict[str, Any]) -> None:
        named = dict(state.model.named_parameters())
        state.before_prune = (
            {n: p.detach().clone() for n, p in named.items()},
            {n: m.clone() for n, m in state.masks.items()},
        )
        state.pruned = {}
        with torch.no_grad():
            for layer, (rule, pname) in stage.layers.items():
                w = named[layer]
                fn = magnitude_mask if rule == "quality" else sparsity_mask
                mask = fn(w, float(params[pname]))
                if layer in state.masks:
                    mask &= state.masks[layer]
                state.masks[layer] = mask
                w.mul_(mask)
                state.pruned[layer] = 1.0 - float(mask.float().mean())

    def _retrain(
        self,
        state: _TrialState,
        index: int,
        params: dict[str, Any],
        seed: int,
        prune_follows: bool,
        sized: Callable[[], SizeReport] | None = None,
    ) -> Iterator[SizeReport | ScoreReport]:
        stage = self.plan.stages[index]
        opts = stage.options
        epochs = int(params[opts["epochs"]])
        lr = float(params[opts["lr"]]) if opts.get("lr") else self.workload.lr
        rounds = iterative_rounds(self.plan.stages, index, params)
        distill: dict[str, Any] = {}
        if opts.get("distill_weight"):
            distill = {
                "teacher": self.teacher(),
                "distill_weight": float(params[opts["distill_weight"]]),
                "temperature": float(params[opts["distill_temperature"]]),
            }
        model = state.model
        previous = self.plan.stages[index - 1] if index > 0 else None
        if rounds > 1 and previous is not None and previous.type == "prune" and state.before_prune:
            yield from self._iterative(state, rounds, opts.get("schedule", "cubic"), epochs, lr, seed, distill, sized)
        else:
            for r in range(rounds):
                yield from self._epochs(state, self._train(
                    state, stage="retrain", epochs=epochs, lr=lr, seed=seed + r, masks=state.masks, distill=distill))
        if opts.get("dsd"):
            dsd_epochs = int(params[opts["dsd_epochs"]])
            named = dict(model.named_parameters())
            sparsity = {n: 1.0 - float(m.float().mean()) for n, m in state.masks.items()}
            # dense phase: no masks, pruned weights start at zero and may regrow
            yield from self._epochs(state, self._train(
                state, stage="dense", epochs=dsd_epochs, lr=lr, seed=seed + DSD_SEED_OFFSET, masks=None,
                distill=distill))
            state.masks = {}
            if not prune_follows:
                with torch.no_grad():
                    for n, s in sparsity.items():
                        mask = sparsity_mask(named[n], s)
                        named[n].mul_(mask)
                        state.masks[n] = mask

    def _iterative(
        self,
        state: _TrialState,
        rounds: int,
        schedule: str,
        epochs: int,
        lr: float,
        seed: int,
        distill: dict[str, Any],
        sized: Callable[[], SizeReport] | None = None,
    ) -> Iterator[SizeReport | ScoreReport]:
        weights, masks = state.before_prune or ({}, {})
        named = dict(state.model.named_parameters())
        with torch.no_grad():
            for n, w in weights.items():
                named[n].copy_(w)
        start = {
            n: 1.0 - float(masks[n].float().mean()) if n in masks else 0.0 for n in state.pruned
        }
        state.masks = {n: m.clone() for n, m in masks.items()}
        for r in range(1, rounds + 1):
            frac = prune_schedule(r, rounds, schedule)
            with torch.no_grad():
                for n, final in state.pruned.items():
                    target = start[n] + (final - start[n]) * frac
                    mask = sparsity_mask(named[n], target)
                    if n in state.masks:
                        mask &= state.masks[n]
                    state.masks[n] = mask
                    named[n].mul_(mask)
            if r == rounds and sized is not None:  # the last round's masks are the final ones
                yield sized()
            yield from self._epochs(state, self._train(
                state, stage="retrain", epochs=epochs, lr=lr, seed=seed + r, masks=state.masks, distill=distill))

    def _quantize(self, state: _TrialState, stage: StagePlan, params: dict[str, Any], seed: int) -> None:
        t0 = time.perf_counter()
        named = dict(state.model.named_parameters())
        codebooks: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        with torch.no_grad():
            for layer, (_, pname) in stage.layers.items():
                bits = int(params[pname])
                w = named[layer]
                shared, labels, codebook = cluster_weights(
                    w.detach().cpu().numpy(), bits, iterations=stage.options["iterations"]
                )
                w.copy_(torch.from_numpy(shared))
                state.code_bits[layer] = bits
                codebooks[layer] = (labels, codebook)
        state.add("quantize", t0, self.device)
        opts = stage.options
        ft_epochs = int(params[opts["finetune_epochs"]]) if opts.get("finetune_epochs") else 0
        if ft_epochs <= 0:
            return
        t0 = time.perf_counter()
        lr_name = opts.get("finetune_lr")
        lr = float(params[lr_name]) if lr_name else self.workload.lr * _FINETUNE_LR_SCALE
        ft_seed = seed + FINETUNE_SEED_OFFSET
        if self.workload.fit is None:
            finetune_centroids(state.model, self.workload, codebooks, epochs=ft_epochs, lr=lr, seed=ft_seed,
                               masks=state.masks)
        else:  # the user's loop; after_step keeps each group of shared weights at one value
            masks = {n: m for n, m in state.masks.items() if n not in codebooks}
            ctx = FitContext(epochs=ft_epochs, lr=lr, device=self.device, seed=ft_seed, stage="finetune",
                             workload=self.workload, masks=masks, shared=label_tensors(codebooks, self.device))
            warning = run_fit(state.model, ctx)
            if warning is not None:
                state.warnings.append(warning)
        state.add("train", t0, self.device)


_FINETUNE_LR_SCALE = 0.1


def prune_schedule(round_index: int, rounds: int, schedule: str = "cubic") -> float:
    """Fraction (0..1] of the final extra sparsity reached after round ``round_index`` (1-based).

    ``linear``: r / R; ``cubic`` (Zhu & Gupta 2017): 1 - (1 - r / R)^3, which prunes fast
    early while the network is redundant and slowly at the end.
    """
    x = min(max(round_index / rounds, 0.0), 1.0)
    if schedule == "linear":
        return x
    return 1.0 - (1.0 - x) ** 3


@dataclass
class _TrialState:
    """What a trial carries from stage to stage."""

    model: nn.Module
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    code_bits: dict[str, int] = field(default_factory=dict)
    structure: dict[str, Any] = field(default_factory=dict)
    pruned: dict[str, float] = field(default_factory=dict)
    before_prune: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None
    scores: bool = False  # score the model after every retraining epoch
    steps: int = 0  # retraining epochs the trial runs in all
    step: int = 0  # retraining epochs run so far
    bounds: SizeBounds | None = None  # the size reported before retraining, checked at the end
    timings: dict[str, float] = field(default_factory=dict)  # phase -> seconds of work
    warnings: list[str] = field(default_factory=list)  # from the workload's fit

    def add(self, phase: str, since: float, device: torch.device) -> None:
        """Count the time from ``since`` (perf_counter) to now, the device's work done, to ``phase``."""
        synchronize(device)
        self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - since


def _layer_report(
    tensors: dict[str, np.ndarray],
    manifest: dict[str, Any],
    code_bits: dict[str, int],
    structure: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    info = {t["name"]: t for t in manifest["tensors"]}
    report: dict[str, dict[str, Any]] = {}
    for name, array in tensors.items():
        entry = info.get(name, {})
        nonzeros = int(np.count_nonzero(array))
        report[name] = {
            "sparsity": 1.0 - nonzeros / array.size if array.size else 0.0,
            "nonzeros": nonzeros,
            "bits": code_bits.get(name),
            "encoding": entry.get("encoding"),
            "index_bits": entry.get("index_bits"),
            "rank": _rank_of(name, structure or {}),
            "shape": list(array.shape),
            "bytes": entry.get("stored_bytes"),
        }
    return report


def _rank_of(name: str, structure: dict[str, Any]) -> Any:
    for layer, entry in structure.items():
        if name.startswith(f"{layer}.") and name.count(".") == layer.count(".") + 2:
            return entry.get("rank", entry.get("ranks"))
    return None
