"""Weights from local files: ImageNet Swin-T for the Swin-UNet, and the published code's models.

Nothing here downloads anything. Two loaders:

- :func:`load_pretrained_swin` reads an ImageNet Swin checkpoint, either the official Microsoft
  release (``swin_tiny_patch4_window7_224.pth``: state dict under ``"model"``, patch merging at the
  *end* of stage ``i`` as ``layers.i.downsample``) or a timm state dict (patch merging at the
  *start* of stage ``i+1``, ``layers.{i+1}.downsample``, the layout of :class:`SwinUNet`'s encoder).
  As Swin-Unet does, encoder stage ``i``'s blocks are also copied into decoder stage ``n-1-i``, and
  tensors whose shape differs from the model's are dropped (Swin-T has depths 2-2-6-2, so blocks
  2-5 of stage 2 have no place in the 2-2-2-2 "lite" model).
- :func:`load_public_checkpoint` maps state dicts saved by the SSL4MIS / AdvMIM code (its
  ``UNet`` / ``MiMUNet`` and ``SwinUnet`` / ``MiMSwinUnet`` wrapping ``swin_unet.*``) onto
  :class:`UNet` and :class:`SwinUNet`, so old models can be evaluated and fine-tuned here.

Both return a :class:`PretrainedReport` (loaded, skipped with reasons, unused checkpoint keys,
model tensors left at their initial values) and log it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # pragma: no cover
    from advmim_lightning.networks.swin_unet import SwinUNet
    from advmim_lightning.networks.unet import UNet

__all__ = [
    "PretrainedReport",
    "load_pretrained_swin",
    "load_public_checkpoint",
    "public_key_to_local",
]

logger = logging.getLogger(__name__)

_BUFFER_REASON = "buffer the model recomputes (relative position index / shifted-window mask)"
_AUX_REASON = "auxiliary head of the public code that no AdvMIM loss uses"
_NO_MAPPING = "no counterpart in this model"


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


# --------------------------------------------------------------------------------------------
# shared machinery


def _load_file(path: str | PathLike[str], what: str, hint: str) -> Any:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"networks/pretrained.py: {what} not found at '{file}' (absolute: {file.absolute()}). "
            f"advmim-lightning never downloads weights: {hint}"
        )
    return torch.load(file, map_location="cpu", weights_only=True)


def _unwrap(raw: Any, source: str) -> dict[str, Tensor]:
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
class _Plan:
    report: PretrainedReport
    tensors: dict[str, Tensor]


def _plan(
    model: nn.Module,
    candidates: list[tuple[str, str, Tensor]],
    unused: dict[str, str],
    source: str,
    fmt: str,
) -> _Plan:
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
    return _Plan(report, tensors)


def _execute(model: nn.Module, plan: _Plan) -> PretrainedReport:
    result = model.load_state_dict(plan.tensors, strict=False)
    if result.unexpected_keys:  # pragma: no cover - _plan only keeps keys of the model
        raise RuntimeError(f"unexpected keys {result.unexpected_keys}")
    logger.info("%s", plan.report)
    return plan.report


# --------------------------------------------------------------------------------------------
# ImageNet Swin


def load_pretrained_swin(model: SwinUNet, path: str | PathLike[str]) -> PretrainedReport:
    """Load ImageNet Swin weights from a local file into a :class:`SwinUNet`, as Swin-Unet does.

    Accepted files (read with ``torch.load(path, map_location="cpu", weights_only=True)``):

    - the official Microsoft checkpoint (``swin_tiny_patch4_window7_224.pth``, state dict under
      ``"model"``, keys such as ``layers.0.blocks.0.attn.qkv.weight``,
      ``layers.0.downsample.reduction.weight``, ``patch_embed.proj.weight``);
    - a timm state dict of ``swin_tiny_patch4_window7_224`` (``layers.1.downsample...``,
      ``head.fc.weight``), bare or under ``"model"`` / ``"state_dict"``.

    Encoder tensors load by name (Microsoft's ``layers.i.downsample`` becomes
    ``layers.{i+1}.downsample``); the blocks of encoder stage ``i`` are also copied into decoder
    stage ``n-1-i`` (``layers_up.{n-1-i}.blocks...``); the final ``norm`` goes to the bottleneck
    norm. Tensors without a place in the model or with another shape are skipped and reported;
    the classifier head and the recomputed buffers are reported as unused. The model is modified
    in place.

    Args:
        model: the Swin-UNet to initialise.
        path: the checkpoint file.

    Returns:
        The report, also logged at INFO level.

    Raises:
        FileNotFoundError: no file at ``path`` (the message says which file to download and where
            to pass it).
        ValueError: the file holds no state dict.
        TypeError: ``model`` is not a SwinUNet.
    """
    from advmim_lightning.networks.swin_unet import SwinUNet

    if not isinstance(model, SwinUNet):
        raise TypeError(
            f"networks/pretrained.py load_pretrained_swin: model must be a SwinUNet, "
            f"got {type(model).__name__}."
        )
    raw = _load_file(
        path,
        "Swin ImageNet checkpoint",
        "download swin_tiny_patch4_window7_224.pth yourself (the official ImageNet-1k Swin-T "
        "checkpoint of github.com/microsoft/Swin-Transformer, or a timm state dict of "
        "swin_tiny_patch4_window7_224), put it for example at "
        "pretrained/swin_tiny_patch4_window7_224.pth and pass that path "
        "(SwinUNet(pretrained=...) or load_pretrained_swin(model, path)).",
    )
    state = _unwrap(raw, str(path))
    microsoft = any(key.startswith("layers.0.downsample.") for key in state)
    num_stages = len(model.depths)
    candidates: list[tuple[str, str, Tensor]] = []
    unused: dict[str, str] = {}
    for key, tensor in state.items():
        if key.endswith(("relative_position_index", "attn_mask")):
            unused[key] = _BUFFER_REASON
            continue
        if key.startswith("head."):
            unused[key] = "ImageNet classification head"
            continue
        target = key
        if microsoft:
            target = re.sub(
                r"^layers\.(\d+)\.downsample\.",
                lambda m: f"layers.{int(m.group(1)) + 1}.downsample.",
                target,
            )
        candidates.append((key, target, tensor))
        block = re.match(r"^layers\.(\d+)\.blocks\.(.+)$", target)
        if block:
            stage = int(block.group(1))
            if stage < num_stages:
                mirror = f"layers_up.{num_stages - 1 - stage}.blocks.{block.group(2)}"
                candidates.append((key, mirror, tensor))
    plan = _plan(
        model, candidates, unused, source=str(path), fmt="microsoft" if microsoft else "timm"
    )
    return _execute(model, plan)


# --------------------------------------------------------------------------------------------
# published AdvMIM / SSL4MIS checkpoints

# SSL4MIS ConvBlock: conv_conv = Sequential(conv, BN, LeakyReLU, Dropout, conv, BN, LeakyReLU)
_CONV_BLOCK = {"0": "conv1", "1": "norm1", "4": "conv2", "5": "norm2"}
_Rule = tuple[re.Pattern, Callable[[re.Match], str]]


def _conv_block(match: re.Match[str], prefix: str) -> str:
    return f"{prefix}.{_CONV_BLOCK[match.group('layer')]}.{match.group('param')}"


_UNET_RULES: list[_Rule] = [
    (
        re.compile(r"^encoder\.in_conv\.conv_conv\.(?P<layer>[0145])\.(?P<param>\w+)$"),
        lambda m: _conv_block(m, "in_block"),
    ),
    (
        re.compile(
            r"^encoder\.down(?P<i>\d+)\.maxpool_conv\.1\.conv_conv\.(?P<layer>[0145])\.(?P<param>\w+)$"
        ),
        lambda m: _conv_block(m, f"down_blocks.{int(m.group('i')) - 1}.conv"),
    ),
    (
        re.compile(r"^decoder\.up(?P<i>\d+)\.up\.(?P<param>weight|bias)$"),
        lambda m: f"up_blocks.{int(m.group('i')) - 1}.up.{m.group('param')}",
    ),
    (
        re.compile(r"^decoder\.up(?P<i>\d+)\.conv1x1\.(?P<param>weight|bias)$"),
        lambda m: f"up_blocks.{int(m.group('i')) - 1}.proj.{m.group('param')}",
    ),
    (
        re.compile(r"^decoder\.up(?P<i>\d+)\.conv\.conv_conv\.(?P<layer>[0145])\.(?P<param>\w+)$"),
        lambda m: _conv_block(m, f"up_blocks.{int(m.group('i')) - 1}.conv"),
    ),
    (re.compile(r"^decoder\.out_conv\.(?P<param>weight|bias)$"), lambda m: f"head.{m['param']}"),
    (re.compile(r"^encoder\.mask_token$"), lambda m: "mask_token"),
]
_UNET_AUX = re.compile(
    r"^(projection_head|prediction_head|contrastive_class_selector\w*|decoder\.decoder)\."
)

_SWIN_RULES: list[_Rule] = [
    (
        re.compile(r"^layers\.(?P<i>\d+)\.downsample\.(?P<rest>.+)$"),
        lambda m: f"layers.{int(m.group('i')) + 1}.downsample.{m.group('rest')}",
    ),
    (re.compile(r"^up\.(?P<rest>.+)$"), lambda m: f"final_expand.{m.group('rest')}"),
    (re.compile(r"^output\.weight$"), lambda m: "head.weight"),
    (
        re.compile(
            r"^(?P<key>(patch_embed|layers|layers_up|concat_back_dim|norm|norm_up)\..+|mask_token)$"
        ),
        lambda m: m.group("key"),
    ),
]
_SWIN_AUX = re.compile(
    r"^(projection_head|prediction_head|contrastive_class_selector\w*)\.|^swin_unet\.decoder\."
)


def public_key_to_local(key: str, model: nn.Module) -> str | None:
    """Name in this library of a parameter of the published AdvMIM / SSL4MIS code.

    Args:
        key: a state-dict key of the public ``UNet``/``MiMUNet`` (``encoder.down1.maxpool_conv.1.
            conv_conv.0.weight``) or ``SwinUnet``/``MiMSwinUnet`` (``swin_unet.layers_up.1.
            blocks.0.attn.qkv.weight``; the ``swin_unet.`` prefix is optional), with any
            ``module.`` prefix removed.
        model: the target :class:`UNet` or :class:`SwinUNet` (selects the mapping).

    Returns:
        The model key, or None if the key has no counterpart (buffers, auxiliary heads,
        unknown names).
    """
    from advmim_lightning.networks.swin_unet import SwinUNet
    from advmim_lightning.networks.unet import UNet

    if isinstance(model, UNet):
        rules = _UNET_RULES
    elif isinstance(model, SwinUNet):
        key = key.removeprefix("swin_unet.")
        if key.endswith(("relative_position_index", "attn_mask")):
            return None
        rules = _SWIN_RULES
    else:
        raise TypeError(
            f"networks/pretrained.py: public checkpoints map onto UNet or SwinUNet, "
            f"got {type(model).__name__}."
        )
    for pattern, target in rules:
        match = pattern.match(key)
        if match:
            return target(match)
    return None


def load_public_checkpoint(
    model: UNet | SwinUNet,
    state_dict_or_path: Mapping[str, Tensor] | str | PathLike[str],
    strict: bool = True,
) -> PretrainedReport:
    """Load a checkpoint of the published AdvMIM / SSL4MIS code into this library's network.

    Key mapping (public -> here), ``module.`` prefixes removed first:

    - U-Net: ``encoder.in_conv.conv_conv.{0,1,4,5}`` -> ``in_block.{conv1,norm1,conv2,norm2}``;
      ``encoder.downK.maxpool_conv.1.conv_conv.*`` -> ``down_blocks.{K-1}.conv.*``;
      ``decoder.upK.up`` -> ``up_blocks.{K-1}.up`` (transposed convolution) or
      ``decoder.upK.conv1x1`` -> ``up_blocks.{K-1}.proj`` (bilinear variant);
      ``decoder.upK.conv.conv_conv.*`` -> ``up_blocks.{K-1}.conv.*``; ``decoder.out_conv`` ->
      ``head``; ``encoder.mask_token`` -> ``mask_token``.
    - Swin-UNet: ``swin_unet.`` prefix dropped; ``layers.i.downsample`` -> ``layers.{i+1}.
      downsample``; ``up`` -> ``final_expand``; ``output`` -> ``head``; ``patch_embed``,
      ``layers.i.blocks``, ``layers_up``, ``concat_back_dim``, ``norm``, ``norm_up``,
      ``mask_token`` keep their names.

    Buffers the model recomputes and the public code's auxiliary heads (projection / prediction
    heads, contrastive selectors, reconstruction decoders) are reported as unused. A plain (non-
    MiM) public model has no mask token; ours then keeps its initial one.

    Args:
        model: a :class:`UNet` or :class:`SwinUNet` built with the public configuration (for the
            published U-Net checkpoints ``UNet(upsampling="bilinear")``).
        state_dict_or_path: the state dict or a file saved with ``torch.save(model.state_dict())``
            (read with ``weights_only=True``).
        strict: raise instead of loading when a checkpoint tensor has no place in the model or
            the wrong shape, or a model tensor other than the mask token gets no value.

    Returns:
        The report, also logged at INFO level.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: with ``strict``, unmatched keys (listed in the message, with hints).
        TypeError: ``model`` is neither a UNet nor a SwinUNet.
    """
    from advmim_lightning.networks.swin_unet import SwinUNet
    from advmim_lightning.networks.unet import UNet

    if not isinstance(model, (UNet, SwinUNet)):
        raise TypeError(
            f"networks/pretrained.py load_public_checkpoint: model must be a UNet or SwinUNet, "
            f"got {type(model).__name__}."
        )
    if isinstance(state_dict_or_path, Mapping):
        source = "<state dict>"
        raw: Any = state_dict_or_path
    else:
        source = str(state_dict_or_path)
        raw = _load_file(
            state_dict_or_path,
            "public AdvMIM / SSL4MIS checkpoint",
            "pass the path of a .pth file saved by the public code "
            "(torch.save(model.state_dict())).",
        )
    state = _unwrap(raw, source)
    state = {key.removeprefix("module."): tensor for key, tensor in state.items()}

    is_unet = isinstance(model, UNet)
    aux = _UNET_AUX if is_unet else _SWIN_AUX
    candidates: list[tuple[str, str, Tensor]] = []
    unused: dict[str, str] = {}
    for key, tensor in state.items():
        target = public_key_to_local(key, model)
        if target is not None:
            candidates.append((key, target, tensor))
        elif aux.match(key):
            unused[key] = _AUX_REASON
        elif key.endswith(("relative_position_index", "attn_mask")):
            unused[key] = _BUFFER_REASON
        else:
            unused[key] = _NO_MAPPING
    plan = _plan(
        model, candidates, unused, source, fmt="public-unet" if is_unet else "public-swin-unet"
    )
    if strict:
        problems = _strict_problems(plan.report)
        if problems:
            raise ValueError(
                f"networks/pretrained.py load_public_checkpoint: {source} does not match "
                f"{type(model).__name__}({_short_config(model)}); nothing was loaded.\n"
                + "\n".join(problems)
                + _hints(model, plan.report)
                + "\nPass strict=False to load the matching tensors anyway."
            )
    return _execute(model, plan)


def _strict_problems(report: PretrainedReport) -> list[str]:
    problems = [f"  skipped {key}: {reason}" for key, reason in report.skipped.items()]
    problems += [
        f"  unused checkpoint key {key}: {reason}"
        for key, reason in report.unused.items()
        if reason == _NO_MAPPING
    ]
    problems += [
        f"  model key {key} gets no value"
        for key in report.not_loaded
        if key != "mask_token" and not key.endswith("num_batches_tracked")
    ]
    return problems


def _short_config(model: nn.Module) -> str:
    config = getattr(model, "config", {})
    return ", ".join(f"{k}={v!r}" for k, v in config.items())


def _hints(model: nn.Module, report: PretrainedReport) -> str:
    hints = []
    skipped = " ".join(report.skipped)
    missing = " ".join(report.not_loaded)
    if ".proj." in skipped and ".up." in missing:
        hints.append(
            "the checkpoint uses bilinear up-sampling (decoder.upK.conv1x1): build "
            "UNet(upsampling='bilinear')"
        )
    if ".up." in skipped and ".proj." in missing:
        hints.append(
            "the checkpoint uses transposed-convolution up-sampling (decoder.upK.up): build "
            "UNet(upsampling='transposed')"
        )
    if "mask_token" in report.skipped:
        hints.append(
            "the mask token differs: the public Swin-UNet uses mask_token='position' at "
            "img_size=224"
        )
    if "patch_embed.proj.weight" in report.skipped or "in_block.conv1.weight" in report.skipped:
        hints.append("the input channels differ: check in_channels")
    if "head.weight" in report.skipped:
        hints.append("the number of classes differs: check num_classes")
    return "".join(f"\nHint: {hint}." for hint in hints)
