"""What the weight loaders share: a plan of which tensors go where, and the report of it.

:func:`plan_load` checks ``(checkpoint key, model key, tensor)`` candidates against a model's
state dict, :func:`execute_plan` loads them and logs the :class:`PretrainedReport` (loaded,
skipped with reasons, unused checkpoint keys, model tensors left at their initial values).
Both loaders use them: ImageNet Swin weights (:mod:`advmim_lightning.networks.pretrained`) and
the published checkpoints (:mod:`advmim_lightning.networks.public_checkpoints`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "BUFFER_REASON",
    "LoadPlan",
    "PretrainedReport",
    "execute_plan",
    "load_file",
    "plan_load",
    "unwrap_state_dict",
]

#: Why the recomputed Swin buffers of a file are not loaded (both loaders report them so).
BUFFER_REASON = "buffer the model recomputes (relative position index / shifted-window mask)"


@dataclass
class PretrainedReport:
    """What a weight loader did.

    Attributes:
        source: the file read, or ``"<state dict>"``.
        format: ``"microsoft"`` / ``"timm"`` (ImageNet Swin) or ``"public-unet"`` /
            ``"public-swin-unet"`` (published AdvMIM / SSL4MIS checkpoints).
        loaded: model keys that received a tensor from the file.
        skipped: model keys the file provided a tensor for that could not be used, with the
            reason (``"not in the model"`` or ``"shape mismatch ..."``).
        unused: checkpoint keys that were not mapped to the model, with the reason.
        not_loaded: model keys (parameters and persistent buffers) left at their initial values.
    """

    source: str
    format: str
    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    unused: dict[str, str] = field(default_factory=dict)
    not_loaded: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [
            f"{self.format} weights from {self.source}: {len(self.loaded)} tensors loaded, "
            f"{len(self.skipped)} skipped, {len(self.unused)} checkpoint keys unused, "
            f"{len(self.not_loaded)} model tensors left at initialisation."
        ]
        if self.skipped:
            lines.append("  skipped:")
            lines += [f"    {key}: {reason}" for key, reason in _grouped(self.skipped)]
        if self.unused:
            lines.append("  unused checkpoint keys:")
            lines += [f"    {key}: {reason}" for key, reason in _grouped(self.unused)]
        if self.not_loaded:
            lines.append("  left at initialisation:")
            lines += [f"    {key}" for key, _ in _grouped(dict.fromkeys(self.not_loaded, ""))]
        return "\n".join(lines)


def _grouped(entries: Mapping[str, str]) -> list[tuple[str, str]]:
    """Collapse the tensors of one Swin block (``...blocks.3.attn.qkv.weight`` etc.) sharing a
    reason into one ``...blocks.3.*`` line, keeping first-seen order."""
    groups: dict[tuple[str, str], int] = {}
    for key, reason in entries.items():
        name = re.sub(r"(\.blocks\.\d+)\.[\w.]+$", r"\1.*", key)
        if name != key:
            reason = re.sub(r"(\.blocks\.\d+)\.[\w.]+\)$", r"\1.*)", reason)
        groups[(name, reason)] = groups.get((name, reason), 0) + 1
    return [
        (name if count == 1 else f"{name} ({count} tensors)", reason)
        for (name, reason), count in groups.items()
    ]


def load_file(path: str | PathLike[str], what: str, hint: str) -> Any:
    """``torch.load`` a local weights file (``weights_only``), or raise naming it and ``hint``."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"networks/pretrained.py: {what} not found at '{file}' (absolute: {file.absolute()}). "
            f"{hint}"
        )
    return torch.load(file, map_location="cpu", weights_only=True)


def unwrap_state_dict(raw: Any, source: str) -> dict[str, Tensor]:
    """Return the tensor entries of a state dict, looking inside ``"model"`` / ``"state_dict"``."""
    if not isinstance(raw, Mapping):
        raise ValueError(
            f"networks/pretrained.py: {source} holds a {type(raw).__name__}, expected a state dict "
            f"(a mapping of parameter names to tensors, possibly under 'model' or 'state_dict')."
        )
    for wrapper in ("model", "state_dict"):
        if isinstance(raw.get(wrapper), Mapping):
            raw = raw[wrapper]
            break
    state = {str(k): v for k, v in raw.items() if isinstance(v, Tensor)}
    if not state:
        raise ValueError(f"networks/pretrained.py: {source} contains no tensors.")
    return state


@dataclass
class LoadPlan:
    """Tensors to load into a model and the report of what happens to each key."""

    report: PretrainedReport
    tensors: dict[str, Tensor]


def plan_load(
    model: nn.Module,
    candidates: list[tuple[str, str, Tensor]],
    unused: dict[str, str],
    source: str,
    fmt: str,
) -> LoadPlan:
    """Check (checkpoint key, model key, tensor) candidates against the model's state dict."""
    model_state = model.state_dict()
    report = PretrainedReport(source=source, format=fmt, unused=dict(unused))
    tensors: dict[str, Tensor] = {}
    for src, dst, tensor in candidates:
        origin = "" if src == dst else f" (from {src})"
        if dst not in model_state:
            report.skipped[dst] = f"not in the model{origin}"
        elif tuple(tensor.shape) != tuple(model_state[dst].shape):
            report.skipped[dst] = (
                f"shape mismatch: file {tuple(tensor.shape)} vs model "
                f"{tuple(model_state[dst].shape)}{origin}"
            )
        else:
            tensors[dst] = tensor
            report.loaded.append(dst)
    report.not_loaded = [key for key in model_state if key not in tensors]
    return LoadPlan(report, tensors)


def execute_plan(model: nn.Module, plan: LoadPlan, log: logging.Logger) -> PretrainedReport:
    """Load the planned tensors, record the source on the model and log the report to ``log``
    (the loader's own logger) at INFO level."""
    result = model.load_state_dict(plan.tensors, strict=False)
    if result.unexpected_keys:  # pragma: no cover - plan_load only keeps keys of the model
        raise RuntimeError(f"unexpected keys {result.unexpected_keys}")
    model.weights_source = plan.report.source
    log.info("%s", plan.report)
    return plan.report
