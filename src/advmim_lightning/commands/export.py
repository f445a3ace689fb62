"""``advmim export``: one trained segmenter as a plain file that loads without Lightning.

The exported file is a ``torch.save`` of plain data (loadable with ``weights_only=True``)::

    {"format": "advmim-segmenter", "version": 1, "network": "transformer",
     "class_path": "advmim_lightning.networks.swin_unet.SwinUNet", "init_args": {...},
     "state_dict": {...}, "num_classes": 4, "in_channels": 1, "image_size": [224, 224],
     "class_names": [...]}

:func:`load_segmenter` rebuilds the network from it (only for classes inside
``advmim_lightning``, the rule of :mod:`advmim_lightning.run.checkpoints`; nothing named in the
file is imported from elsewhere). With ``--torch_export`` a ``torch.export`` program (``.pt2``)
of the inference forward is written too, for tools that run a graph without this library.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import nn

# The checkpoint reading and trust rule live in advmim_lightning.run.checkpoints; these names stay
# importable from here, where they were first.
from advmim_lightning.run.checkpoints import (
    LIGHTNING_INSTANTIATOR,
    TRUSTED_CLASSES_ENV,
    is_trusted_class,
    read_checkpoint,
    rebuild,
    refuse_untrusted_classes,
    trusted_class_prefixes,
)
from advmim_lightning.run.folders import ensure_writable_folder

__all__ = [
    "FORMAT",
    "LIGHTNING_INSTANTIATOR",
    "TRUSTED_CLASSES_ENV",
    "VERSION",
    "export_segmenter",
    "load_segmenter",
    "main",
    "read_checkpoint",
    "refuse_untrusted_classes",
    "trusted_class_prefixes",
]

FORMAT = "advmim-segmenter"
VERSION = 1


def export_segmenter(
    checkpoint_path: str | Path,
    output: str | Path,
    network: str = "transformer",
    torch_export: bool = False,
) -> list[Path]:
    """Export one segmenter of a checkpoint to ``output`` (and ``output`` with ``.pt2``).

    Args:
        checkpoint_path: An ``AdvMIMModule`` checkpoint (e.g. ``runs/<run>/checkpoints/last.ckpt``).
        output: The file to write (``.pt``).
        network: ``"transformer"`` or ``"cnn"``.
        torch_export: Also write a ``torch.export`` program of ``net(x)`` next to it.

    Returns:
        The paths written.

    Raises:
        ValueError: On an unknown network name, a network without stored constructor args, or
            ``torch_export`` with an ``output`` ending in ``.pt2`` (the program would replace it).
        FileNotFoundError: When the checkpoint does not exist.
        OSError: Naming the file, when ``output`` is a folder or its folder cannot be written
            (checked before the checkpoint is read).
    """
    if network not in ("transformer", "cnn"):
        raise ValueError(f"network={network!r} is not one of ['transformer', 'cnn']")
    output = Path(output)
    targets = [output, *([output.with_suffix(".pt2")] if torch_export else [])]
    if torch_export and targets[1] == output:
        raise ValueError(
            f"{output}: the torch.export program is written to {targets[1]}, which would replace "
            "the export; expected an output name ending in .pt"
        )
    ensure_writable_folder(output.parent, "export folder")
    for target in targets:
        if target.is_dir():
            raise IsADirectoryError(
                f"cannot write the export file {target}: it is a folder; expected a file name "
                f"(e.g. {target / 'segmenter.pt'})"
            )
    checkpoint = read_checkpoint(checkpoint_path)
    hparams = checkpoint["hyper_parameters"]
    spec = hparams[network]
    if spec.get("init_args") is None:
        raise ValueError(
            f"{checkpoint_path}: the {network} ({spec.get('class_path')}) stored no constructor "
            "arguments (it has no `config` property), so it cannot be exported as a plain file"
        )
    prefix = f"{network}."
    state = {
        k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)
    }
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "network": network,
        "class_path": spec["class_path"],
        "init_args": _plain(spec["init_args"]),
        "state_dict": state,
        "num_classes": int(hparams["num_classes"]),
        "in_channels": int(hparams["in_channels"]),
        "image_size": [int(s) for s in hparams["image_size"]],
        "class_names": [str(n) for n in hparams.get("class_names", [])],
    }
    tmp = output.with_name(output.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(output)
    written = [output]
    if torch_export:
        net = load_segmenter(output).eval()
        example = torch.zeros(1, payload["in_channels"], *payload["image_size"])
        program = torch.export.export(net, (example,))
        program_path = output.with_suffix(".pt2")
        torch.export.save(program, program_path)
        written.append(program_path)
    return written


def load_segmenter(path: str | Path) -> nn.Module:
    """Rebuild an exported segmenter (no Lightning needed); returns it in eval mode.

    Raises:
        ValueError: When the file is not an export of this library or names a class outside it.
    """
    path = Path(path)
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not an advmim segmenter export (format {FORMAT!r})")
    class_path = str(payload["class_path"])
    if not is_trusted_class(class_path, rebuild=True):
        raise ValueError(f"{path} names {class_path!r}; only advmim_lightning classes are rebuilt")
    net = rebuild(class_path, payload["init_args"])
    net.load_state_dict(payload["state_dict"])
    return net.eval()


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> None:
    """``advmim export CKPT OUT [--network transformer|cnn] [--torch_export]``."""
    parser = argparse.ArgumentParser(
        prog="advmim export",
        description="Export one trained segmenter as a plain file loadable without Lightning.",
    )
    parser.add_argument("checkpoint", help="AdvMIMModule checkpoint (.ckpt)")
    parser.add_argument("output", help="file to write (.pt)")
    parser.add_argument("--network", choices=["transformer", "cnn"], default="transformer")
    parser.add_argument(
        "--torch_export", action="store_true", help="also write a torch.export program (.pt2)"
    )
    args = parser.parse_args(argv)
    # bad input (a missing checkpoint, an unwritable output) ends as one line, the way every
    # advmim command reports it (advmim_lightning.run.main.main)
    paths = export_segmenter(args.checkpoint, args.output, args.network, args.torch_export)
    for path in paths:
        print(f"wrote {path}")
