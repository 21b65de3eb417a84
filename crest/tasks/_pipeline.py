"""What one trial does: prune, retrain, quantize, encode, then score the decoded bytes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from crest import gpu
from crest.exceptions import CrestError
from crest.tasks._encode_plan import plan_encoding
from crest.tasks._plan import TrialPlan
from crest.tasks._prune import magnitude_mask, sparsity_mask
from crest.tasks._quantize import share_weights
from crest.tasks._train import evaluate, train
from crest.tasks._workload import Workload

__all__ = [
    "TrialOutcome",
    "TrialRunner",
    "train_baseline",
    "state_to_numpy",
    "model_from_tensors",
    "dense_fp32_bytes",
    "encode_state",
]


@dataclass
class TrialOutcome:
    """A finished trial: the artifact bytes and what was measured on their decoded form.

    ``layers`` maps each tensor name to {"sparsity" (fraction of zeros), "bits" (code
    width, or None when not quantized), "encoding", "index_bits", "nonzeros"}.
    """

    blob: bytes
    accuracy: float
    accuracy_drop: float
    size_bytes: int
    ratio: float
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0


def state_to_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's state dict as CPU NumPy arrays (copies), in state-dict order."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def model_from_tensors(workload: Workload, tensors: dict[str, np.ndarray]) -> nn.Module:
    """A fresh model of the workload with ``tensors`` loaded (strict: names and shapes must match)."""
    model = workload.build_model()
    state = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in tensors.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CrestError(f"the artifact does not fit workload '{workload.name}': {e}") from e
    model.eval()
    return model


def dense_fp32_bytes(model: nn.Module) -> int:
    """Bytes of all parameters stored as dense fp32 (the denominator of the ratio)."""
    return 4 * sum(p.numel() for p in model.parameters())


def encode_state(
    tensors: dict[str, np.ndarray],
    *,
    code_bits: dict[str, int] | None = None,
    index_bits: int | str = "auto",
    chunk_entries: int = 1024,
    metadata: dict[str, Any] | None = None,
) -> bytes:
    """Encode a state dict with the smallest exact per-tensor options."""
    overrides = plan_encoding(tensors, code_bits=code_bits, index_bits=index_bits)
    return gpu.encode(
        tensors, overrides=overrides, chunk_entries=chunk_entries, metadata=metadata or {}
    )


def train_baseline(workload: Workload, *, seed: int) -> tuple[bytes, float]:
    """Train the dense baseline and encode it exactly.

    Returns:
        (artifact bytes, the baseline's score measured on the decoded artifact).
    """
    torch.manual_seed(seed)
    model = workload.build_model()
    train(model, workload, epochs=workload.baseline_epochs, lr=workload.lr, seed=seed)
    blob = encode_state(state_to_numpy(model), metadata={"workload": workload.name, "role": "baseline"})
    accuracy = evaluate(model_from_tensors(workload, gpu.decode(blob)), workload)
    return blob, accuracy


class TrialRunner:
    """Runs trials of one plan on one workload; holds the baseline (loaded once).

    Plain Python: the orchestrator wraps it in a Ray actor.
    """

    def __init__(
        self, workload: Workload, plan: TrialPlan, baseline_blob: bytes, baseline_accuracy: float
    ) -> None:
        self.workload = workload
        self.plan = plan
        self.baseline = gpu.decode(baseline_blob)
        self.baseline_accuracy = baseline_accuracy
        self.dense_bytes = dense_fp32_bytes(workload.build_model())

    def run(self, params: dict[str, Any], *, seed: int, metadata: dict[str, Any] | None = None) -> TrialOutcome:
        """Run the stages with ``params`` (every parameter of the plan, by name).

        Raises:
            CrestError: a parameter is missing.
        """
        start = time.perf_counter()
        missing = [p.name for p in self.plan.params if p.name not in params]
        if missing:
            raise CrestError(f"trial parameters missing: {', '.join(missing)}")
        torch.manual_seed(seed)
        model = model_from_tensors(self.workload, self.baseline)
        named = dict(model.named_parameters())
        masks: dict[str, torch.Tensor] = {}
        code_bits: dict[str, int] = {}
        for stage in self.plan.stages:
            if stage.type == "prune":
                with torch.no_grad():
                    for layer, (rule, pname) in stage.layers.items():
                        w = named[layer]
                        fn = magnitude_mask if rule == "quality" else sparsity_mask
                        mask = fn(w, float(params[pname]))
                        if layer in masks:
                            mask &= masks[layer]
                        masks[layer] = mask
                        w.mul_(mask)
            elif stage.type == "retrain":
                epochs = int(params[stage.options["epochs"]])
                lr_name = stage.options.get("lr")
                lr = float(params[lr_name]) if lr_name else self.workload.lr
                train(model, self.workload, epochs=epochs, lr=lr, seed=seed, masks=masks)
            elif stage.type == "quantize":
                with torch.no_grad():
                    for layer, (_, pname) in stage.layers.items():
                        bits = int(params[pname])
                        w = named[layer]
                        shared = share_weights(
                            w.detach().cpu().numpy(), bits, iterations=stage.options["iterations"]
                        )
                        w.copy_(torch.from_numpy(shared))
                        code_bits[layer] = bits
        tensors = state_to_numpy(model)
        blob = encode_state(
            tensors,
            code_bits=code_bits,
            index_bits=self.plan.index_bits,
            chunk_entries=self.plan.chunk_entries,
            metadata={"workload": self.workload.name, **(metadata or {})},
        )
        decoded = gpu.decode(blob)
        accuracy = evaluate(model_from_tensors(self.workload, decoded), self.workload)
        manifest = gpu.inspect(blob)
        layers = _layer_report(decoded, manifest, code_bits)
        size = len(blob)
        return TrialOutcome(
            blob=blob,
            accuracy=accuracy,
            accuracy_drop=self.baseline_accuracy - accuracy,
            size_bytes=size,
            ratio=self.dense_bytes / size,
            layers=layers,
            seconds=time.perf_counter() - start,
        )


def _layer_report(
    tensors: dict[str, np.ndarray], manifest: dict[str, Any], code_bits: dict[str, int]
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
        }
    return report
