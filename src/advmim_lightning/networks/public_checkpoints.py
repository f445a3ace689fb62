"""The published AdvMIM / SSL4MIS models' weights in this library's networks.

:func:`load_public_checkpoint` maps state dicts saved by the SSL4MIS / AdvMIM code (its ``UNet`` /
``MiMUNet`` and ``SwinUnet`` / ``MiMSwinUnet`` wrapping ``swin_unet.*``) onto :class:`UNet` and
:class:`SwinUNet`, so old models can be evaluated and fine-tuned here; :func:`public_key_to_local`
names the counterpart of one public key. The load is reported with a
:class:`~advmim_lightning.networks.pretrained.PretrainedReport`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from os import PathLike
from typing import Any

from torch import Tensor, nn

from advmim_lightning.networks.swin_unet import SwinUNet
from advmim_lightning.networks.unet import UNet
from advmim_lightning.networks.weight_loading import (
    BUFFER_REASON,
    PretrainedReport,
    execute_plan,
    load_file,
    plan_load,
    unwrap_state_dict,
)

__all__ = ["load_public_checkpoint", "public_key_to_local"]

logger = logging.getLogger(__name__)

_AUX_REASON = "auxiliary head of the public code that no AdvMIM loss uses"
_NO_MAPPING = "no counterpart in this model"

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
    if isinstance(model, UNet):
        rules = _UNET_RULES
    elif isinstance(model, SwinUNet):
        key = key.removeprefix("swin_unet.")
        if key.endswith(("relative_position_index", "attn_mask")):
            return None
        rules = _SWIN_RULES
    else:
        raise TypeError(
            f"networks/public_checkpoints.py: public checkpoints map onto UNet or SwinUNet, "
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
      ``decoder.upK.conv1x1`` -> ``up_blocks.{K-1}.proj`` (the published bilinear decoder,
      ``UNet()``'s default) or ``decoder.upK.up`` -> ``up_blocks.{K-1}.up`` (transposed
      convolution, ``UNet(upsampling="transposed")``);
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
        model: a :class:`UNet` or :class:`SwinUNet` built with the public configuration (the
            defaults: ``UNet()`` and ``SwinUNet()`` for the published 4-class models).
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
    if not isinstance(model, (UNet, SwinUNet)):
        raise TypeError(
            f"networks/public_checkpoints.py load_public_checkpoint: model must be a UNet or "
            f"SwinUNet, got {type(model).__name__}."
        )
    if isinstance(state_dict_or_path, Mapping):
        source = "<state dict>"
        raw: Any = state_dict_or_path
    else:
        source = str(state_dict_or_path)
        raw = load_file(
            state_dict_or_path,
            "public AdvMIM / SSL4MIS checkpoint",
            "Pass the path of a .pth file saved by the public code "
            "(torch.save(model.state_dict())).",
        )
    state = unwrap_state_dict(raw, source)
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
            unused[key] = BUFFER_REASON
        else:
            unused[key] = _NO_MAPPING
    plan = plan_load(
        model, candidates, unused, source, fmt="public-unet" if is_unet else "public-swin-unet"
    )
    if strict:
        problems = _strict_problems(plan.report)
        if problems:
            raise ValueError(
                f"networks/public_checkpoints.py load_public_checkpoint: {source} does not match "
                f"{type(model).__name__}({_short_config(model)}); nothing was loaded.\n"
                + "\n".join(problems)
                + _hints(model, plan.report)
                + "\nPass strict=False to load the matching tensors anyway."
            )
    return execute_plan(model, plan, logger)


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
            "UNet(upsampling='bilinear'), the default"
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
