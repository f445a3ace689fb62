"""ImageNet Swin-T weights for the Swin-UNet: where they come from and how they map onto it.

:func:`load_pretrained_swin` (and ``SwinUNet(pretrained=...)``) starts a :class:`SwinUNet` from
ImageNet Swin weights, as the published AdvMIM code and CTCT always do. The weights come from

- a local file: the official Microsoft release (``swin_tiny_patch4_window7_224.pth``: state dict
  under ``"model"``, patch merging at the *end* of stage ``i`` as ``layers.i.downsample``) or a
  timm state dict (patch merging at the *start* of stage ``i+1``, ``layers.{i+1}.downsample``,
  the layout of :class:`SwinUNet`'s encoder); or
- a Hugging Face Hub model name such as :data:`IMAGENET_SWIN_T`
  (``"timm/swin_tiny_patch4_window7_224.ms_in1k"``, timm's weights), read from the local
  Hugging Face cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
  ``~/.cache/huggingface/hub``) and downloaded into it once where the machine is online. With
  ``HF_HUB_OFFLINE=1`` nothing is downloaded.

As Swin-Unet does, encoder stage ``i``'s blocks are also copied into decoder stage ``n-1-i``, and
tensors whose shape differs from the model's are dropped (Swin-T has depths 2-2-6-2, so blocks
2-5 of stage 2 have no place in the 2-2-2-2 "lite" model).

Every loader returns a :class:`PretrainedReport` (loaded, skipped with reasons, unused checkpoint
keys, model tensors left at their initial values), logs it at INFO level and records its source
as the model's ``weights_source`` (:mod:`advmim_lightning.networks.weight_loading`, shared with
the published checkpoints' loader). :func:`random_init_warning` says what starting a Swin-T sized
Swin-UNet from random weights costs. The published code's own checkpoints load with
:func:`advmim_lightning.networks.load_public_checkpoint`.
"""

from __future__ import annotations

import logging
import os
import re
from os import PathLike
from pathlib import Path

import torch
from torch import Tensor, nn

import advmim_lightning.networks.weight_loading as weight_loading
from advmim_lightning.networks.weight_loading import PretrainedReport

__all__ = [
    "IMAGENET_SWIN_T",
    "PretrainedReport",
    "hf_cache_dir",
    "hub_model_id",
    "load_pretrained_swin",
    "random_init_warning",
]

logger = logging.getLogger(__name__)

#: The ImageNet-1k Swin-T weights the ACDC and NIfTI configs start the Swin-UNet from (timm's
#: ``swin_tiny_patch4_window7_224.ms_in1k`` on the Hugging Face Hub).
IMAGENET_SWIN_T = "timm/swin_tiny_patch4_window7_224.ms_in1k"
#: Files looked up in a Hub model repository, in timm's order of preference.
HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
#: Suffixes that make a ``pretrained`` string a local file even when it looks like ``org/name``.
_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".tar")

# --------------------------------------------------------------------------------------------
# ImageNet Swin: where the weights come from


def hf_cache_dir() -> Path:
    """The Hugging Face Hub cache folder, read from the environment at call time.

    ``HF_HUB_CACHE``, else the older ``HUGGINGFACE_HUB_CACHE``, else ``HF_HOME/hub``, else
    ``$XDG_CACHE_HOME/huggingface/hub`` (``~/.cache/huggingface/hub``), as ``huggingface_hub``
    resolves it.
    """
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return Path(os.path.expandvars(os.environ[name])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(cache).expanduser() / "huggingface" / "hub"


def _offline() -> bool:
    return any(
        os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hub_model_id(source: str | PathLike[str]) -> str | None:
    """The Hugging Face Hub model a ``pretrained`` value names, or None for a local file.

    A hub name is ``"org/name"`` (optionally ``@revision``), ``"hf-hub:org/name"`` or a timm
    pretrained tag such as ``"swin_tiny_patch4_window7_224.ms_in1k"`` (looked up in timm's
    pretrained configurations). A :class:`~pathlib.Path`, an existing file, or a string ending in
    a weights-file suffix (``.pth``, ``.pt``, ``.bin``, ``.safetensors``, ...) is a local file.

    Args:
        source: the value given as ``pretrained``.

    Returns:
        ``"org/name"`` or ``"org/name@revision"``, or None.
    """
    if not isinstance(source, str):
        return None
    if source.startswith("hf-hub:"):
        return source.removeprefix("hf-hub:")
    if Path(source).exists() or source.lower().endswith(_FILE_SUFFIXES):
        return None
    if re.fullmatch(r"[\w.-]+/[\w.-]+(@[\w./-]+)?", source):
        return source
    if re.fullmatch(r"[\w-]+\.[\w-]+", source):  # a timm tag: architecture.pretrained_tag
        from timm.models import get_pretrained_cfg

        try:
            config = get_pretrained_cfg(source)
        except (RuntimeError, ValueError):  # pragma: no cover - timm versions differ here
            return None
        return getattr(config, "hf_hub_id", None) or None
    return None


def _hub_weights(model_id: str) -> tuple[Path, str]:
    """Local path of a Hub model's weights file: from the cache, else downloaded once.

    Returns:
        The file and ``"<model_id> (Hugging Face cache: <file>)"``.

    Raises:
        FileNotFoundError: not cached and offline / unreachable, or no weights file in the repo.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    repo_id, _, revision = model_id.partition("@")
    cache = hf_cache_dir()
    for filename in HUB_WEIGHT_FILES:
        try:
            path = hf_hub_download(
                repo_id, filename, revision=revision or None, cache_dir=cache, local_files_only=True
            )
        except (LocalEntryNotFoundError, EntryNotFoundError):
            continue
        return Path(path), f"{model_id} (Hugging Face cache: {path})"
    if _offline():
        raise FileNotFoundError(_not_cached_message(model_id, cache, "HF_HUB_OFFLINE is set"))
    for filename in HUB_WEIGHT_FILES:
        try:
            path = hf_hub_download(repo_id, filename, revision=revision or None, cache_dir=cache)
        except LocalEntryNotFoundError as err:  # the Hub could not be reached
            raise FileNotFoundError(_not_cached_message(model_id, cache, _reason(err))) from err
        except EntryNotFoundError:  # not in the repository: try the next file name
            continue
        except OSError as err:  # no network, unknown repository, HTTP errors
            raise FileNotFoundError(_not_cached_message(model_id, cache, _reason(err))) from err
        logger.info("downloaded %s %s into the Hugging Face cache %s", model_id, filename, cache)
        return Path(path), f"{model_id} (Hugging Face cache: {path})"
    raise FileNotFoundError(
        f"networks/pretrained.py: the Hugging Face Hub model {model_id!r} holds none of "
        f"{', '.join(HUB_WEIGHT_FILES)}; expected timm weights such as {IMAGENET_SWIN_T!r}."
    )


def _reason(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _not_cached_message(model_id: str, cache: Path, reason: str) -> str:
    repo_id, _, revision = model_id.partition("@")
    revision_arg = f", revision={revision!r}" if revision else ""
    command = (
        f'python -c "from huggingface_hub import hf_hub_download; '
        f'hf_hub_download({repo_id!r}, {HUB_WEIGHT_FILES[0]!r}{revision_arg})"'
    )
    return (
        f"networks/pretrained.py: the Swin ImageNet weights {model_id!r} are not in the Hugging "
        f"Face cache {cache} and cannot be downloaded here ({reason}). Two ways out: (1) on a "
        f"machine with a network run `{command}` (add `cache_dir=...` or set HF_HUB_CACHE to "
        f"choose the folder), then copy its models--{repo_id.replace('/', '--')} folder into "
        f"{cache} here or point HF_HUB_CACHE at the copy; or (2) pass a local weights file "
        f"instead of the model name: SwinUNet(pretrained='/path/to/swin_tiny_patch4_window7_224"
        f".pth') or --model.transformer.init_args.pretrained /path/to/file (the official "
        f"Microsoft Swin-T checkpoint or a timm state dict)."
    )


def _read_swin_weights(source: str | PathLike[str]) -> tuple[dict[str, Tensor], str]:
    """The state dict named by ``source`` (hub name or local file) and its description."""
    model_id = hub_model_id(source)
    if model_id is None:
        raw = weight_loading.load_file(
            source,
            "Swin ImageNet checkpoint",
            "Local files are never downloaded: pass an existing file (the official ImageNet-1k "
            "Swin-T checkpoint swin_tiny_patch4_window7_224.pth of "
            "github.com/microsoft/Swin-Transformer, or a timm state dict of "
            "swin_tiny_patch4_window7_224; download swin_tiny_patch4_window7_224.pth yourself "
            "and put it e.g. at pretrained/swin_tiny_patch4_window7_224.pth), or the Hugging "
            f"Face Hub name {IMAGENET_SWIN_T!r} to read timm's weights from the Hugging Face "
            "cache.",
        )
        return weight_loading.unwrap_state_dict(raw, str(source)), str(source)
    path, description = _hub_weights(model_id)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file as load_safetensors

        raw = load_safetensors(path, device="cpu")
    else:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    return weight_loading.unwrap_state_dict(raw, description), description


# --------------------------------------------------------------------------------------------
# ImageNet Swin: mapping onto the Swin-UNet


def load_pretrained_swin(model: nn.Module, source: str | PathLike[str]) -> PretrainedReport:
    """Load ImageNet Swin weights into a :class:`SwinUNet`, as Swin-Unet does.

    ``source`` is a local file or a Hugging Face Hub model name (see :func:`hub_model_id`), e.g.
    :data:`IMAGENET_SWIN_T`. A hub model is read from the Hugging Face cache
    (:func:`hf_cache_dir`); when it is not cached it is downloaded once into the cache, unless
    ``HF_HUB_OFFLINE=1``. Accepted contents (local files read with ``torch.load(...,
    weights_only=True)``, hub files as ``model.safetensors`` or ``pytorch_model.bin``):

    - the official Microsoft checkpoint (``swin_tiny_patch4_window7_224.pth``, state dict under
      ``"model"``, keys such as ``layers.0.blocks.0.attn.qkv.weight``,
      ``layers.0.downsample.reduction.weight``, ``patch_embed.proj.weight``);
    - a timm state dict of ``swin_tiny_patch4_window7_224`` (``layers.1.downsample...``,
      ``head.fc.weight``), bare or under ``"model"`` / ``"state_dict"`` (the hub's format).

    Encoder tensors load by name (Microsoft's ``layers.i.downsample`` becomes
    ``layers.{i+1}.downsample``); the blocks of encoder stage ``i`` are also copied into decoder
    stage ``n-1-i`` (``layers_up.{n-1-i}.blocks...``); the final ``norm`` goes to the bottleneck
    norm. Tensors without a place in the model or with another shape are skipped and reported;
    the classifier head and the recomputed buffers are reported as unused. The model is modified
    in place and its ``weights_source`` set to the report's source.

    Args:
        model: the Swin-UNet to initialise.
        source: a checkpoint file, or a Hub model name such as
            ``"timm/swin_tiny_patch4_window7_224.ms_in1k"``.

    Returns:
        The report, also logged at INFO level.

    Raises:
        FileNotFoundError: no file at ``source``, or a hub model neither cached nor
            downloadable (the message names the cache folder and the ways out).
        ValueError: the file holds no state dict.
        TypeError: ``model`` is not a SwinUNet.
    """
    if not (hasattr(model, "depths") and hasattr(model, "layers_up")):
        raise TypeError(
            f"networks/pretrained.py load_pretrained_swin: model must be a SwinUNet, "
            f"got {type(model).__name__}."
        )
    state, description = _read_swin_weights(source)
    microsoft = any(key.startswith("layers.0.downsample.") for key in state)
    num_stages = len(model.depths)
    candidates: list[tuple[str, str, Tensor]] = []
    unused: dict[str, str] = {}
    for key, tensor in state.items():
        if key.endswith(("relative_position_index", "attn_mask")):
            unused[key] = weight_loading.BUFFER_REASON
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
    plan = weight_loading.plan_load(
        model, candidates, unused, source=description, fmt="microsoft" if microsoft else "timm"
    )
    return weight_loading.execute_plan(model, plan, logger)


# --------------------------------------------------------------------------------------------
# starting from random weights


def fits_imagenet_swin_t(model: nn.Module) -> bool:
    """Whether ImageNet Swin-T weights fit ``model``'s encoder: a Swin-UNet with patch 4, embed
    96, window 7 and heads 3-6-12-24 (the public code's "tiny lite" default)."""
    return (
        hasattr(model, "layers_up")
        and getattr(model, "patch_size", None) == 4
        and getattr(model, "embed_dim", None) == 96
        and getattr(model, "window_size", None) == 7
        and tuple(getattr(model, "num_heads", ())) == (3, 6, 12, 24)
    )


def random_init_warning(model: nn.Module, name: str = "transformer") -> str | None:
    """The warning for a Swin-T sized Swin-UNet that starts training from random weights.

    Args:
        model: the network about to be trained.
        name: how the message calls it.

    Returns:
        The message, or None when ``model`` is not Swin-T sized (small custom networks) or was
        given weights (its ``weights_source`` is set by the loaders of this package).
    """
    if not fits_imagenet_swin_t(model) or getattr(model, "weights_source", None) is not None:
        return None
    return (
        f"The {name} (a Swin-T sized SwinUNet) starts from random weights. The published AdvMIM "
        "and CTCT code always start it from ImageNet Swin-T weights; trained from scratch with "
        "SGD it sits on the all-background prediction for hundreds of iterations, so its "
        "pseudo-labels teach the CNN nothing and the results fall short of the published ones. "
        f"Give weights with --model.transformer.init_args.pretrained {IMAGENET_SWIN_T} (read "
        "from the Hugging Face cache, downloaded once where online) or a local "
        "swin_tiny_patch4_window7_224.pth; in Python SwinUNet(pretrained=...)."
    )
