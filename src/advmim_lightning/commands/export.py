"""``advmim export``: one trained segmenter as a plain file that loads without Lightning.

The exported file is a ``torch.save`` of plain data (loadable with ``weights_only=True``)::

    {"format": "advmim-segmenter", "version": 1, "network": "transformer",
     "class_path": "advmim_lightning.networks.swin_unet.SwinUNet", "init_args": {...},
     "state_dict": {...}, "num_classes": 4, "in_channels": 1, "image_size": [224, 224],
     "class_names": [...]}

:func:`load_segmenter` rebuilds the network from it (only for classes inside
``advmim_lightning``, the rule of :mod:`advmim_lightning.run.checkpoints`; nothing named in the
file is imported from elsewhere). With ``--torch_export`` a ``torch.export`` program (``.pt2``)
of the inference forward is written too, for tools that run a graph without this library; its
batch dimension is dynamic (any batch size from 1), height and width are the training size.

Export never replaces its input checkpoint, never writes inside a run's ``checkpoints/`` folder
and replaces an existing file only when asked (``--overwrite``).
"""

from __future__ import annotations

import argparse
import os
import uuid
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advmim_lightning.networks.specs import is_trusted_class, rebuild
from advmim_lightning.run.checkpoints import (
    NETWORK_KEYS,
    read_checkpoint,
    refuse_untrusted_classes,
)
from advmim_lightning.run.folders import LOCK_FILE, ensure_writable_folder

__all__ = [
    "FORMAT",
    "VERSION",
    "export_segmenter",
    "load_segmenter",
    "main",
]

FORMAT = "advmim-segmenter"
VERSION = 1


def export_segmenter(
    checkpoint_path: str | Path,
    output: str | Path,
    network: str = "transformer",
    torch_export: bool = False,
    overwrite: bool = False,
) -> list[Path]:
    """Export one segmenter of a checkpoint to ``output`` (and ``output`` with ``.pt2``).

    Args:
        checkpoint_path: An ``AdvMIMModule`` checkpoint (e.g. ``runs/<run>/checkpoints/last.ckpt``).
        output: The file to write (``.pt``).
        network: ``"transformer"`` or ``"cnn"``.
        torch_export: Also write a ``torch.export`` program of ``net(x)`` next to it (batch
            dimension dynamic, from 1).
        overwrite: Replace ``output`` (and the ``.pt2``) when they exist (off: refuse). The
            input checkpoint and the files of a run's ``checkpoints/`` folder are never
            replaced, whatever this says.

    Returns:
        The paths written.

    Raises:
        ValueError: On an unknown network name, a network without stored constructor args,
            ``torch_export`` with an ``output`` ending in ``.pt2`` (the program would replace
            it), an output that is the input checkpoint or lies in a run's ``checkpoints/``
            folder, or an existing output without ``overwrite``.
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
    for target in targets:
        _refuse_protected_target(target, Path(checkpoint_path), overwrite)
    ensure_writable_folder(output.parent, "export folder")
    checkpoint = read_checkpoint(checkpoint_path, check_classes=False)
    hparams = checkpoint["hyper_parameters"]
    spec = hparams[network]
    if spec.get("init_args") is None:
        class_path = spec.get("class_path")
        raise ValueError(
            f"{checkpoint_path}: the {network} network ({class_path}) stores no constructor "
            "arguments (its class has no `config` property), so it cannot be rebuilt from the "
            "checkpoint and is not exported; load it with an instance you build: "
            f"AdvMIMModule.load_from_checkpoint({str(checkpoint_path)!r}, "
            f"{network}=MyNet(...)).{network}, then save that network yourself (its state_dict "
            "or torch.export.export)"
        )
    # Only the exported network's class is named in the file (the other one is not imported).
    others = [name for name in NETWORK_KEYS if name != network]
    refuse_untrusted_classes(checkpoint, checkpoint_path, overridden=others)
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
    _write(output, lambda tmp: torch.save(payload, tmp), overwrite)
    written = [output]
    if torch_export:
        net = load_segmenter(output).eval()
        # Traced at batch 2 (a size-1 dimension would be fixed at 1); runs at any batch >= 1.
        example = torch.zeros(2, payload["in_channels"], *payload["image_size"])
        batch = torch.export.Dim("batch", min=1)
        program = torch.export.export(net, (example,), dynamic_shapes=({0: batch},))
        program_path = targets[1]
        _write(program_path, lambda tmp: torch.export.save(program, tmp), overwrite)
        written.append(program_path)
    return written


def _refuse_protected_target(target: Path, checkpoint: Path, overwrite: bool) -> None:
    """Refuse a file export must not write: its input, a run's checkpoint, an existing file."""
    if target.is_dir():
        raise IsADirectoryError(
            f"cannot write the export file {target}: it is a folder; expected a file name "
            f"(e.g. {target / 'segmenter.pt'})"
        )
    if _same_file(target, checkpoint):
        raise ValueError(
            f"the export file {target} is the checkpoint being exported ({checkpoint}); "
            "export never replaces its input, even with --overwrite: choose another output file"
        )
    folder = _run_checkpoints_folder(target)
    if folder is not None:
        raise ValueError(
            f"the export file {target} lies in the run's checkpoint folder {folder}; exports "
            "are never written among a run's checkpoints, even with --overwrite: choose a file "
            "outside it (e.g. next to the run folder)"
        )
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise ValueError(
            f"the export file {target} exists and is not replaced: choose another output file "
            "or allow it with --overwrite (export_segmenter(overwrite=True))"
        )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them is missing
        return False


def _run_checkpoints_folder(target: Path) -> Path | None:
    """The run ``checkpoints/`` folder ``target`` would be written in, or None.

    A folder named ``checkpoints`` (the target's or any above it, links resolved) that holds
    ``.ckpt`` files or lies in a run folder (one holding ``config.yaml`` or the run lock).
    """
    for folder in target.absolute().resolve().parents:
        if folder.name != "checkpoints":
            continue
        in_run = any((folder.parent / name).is_file() for name in ("config.yaml", LOCK_FILE))
        if in_run or any(folder.glob("*.ckpt")):
            return folder
    return None


def _write(path: Path, save: Any, overwrite: bool) -> None:
    """``save(tmp)`` to a temporary file beside ``path``, then give it ``path``'s name.

    Without ``overwrite`` the name is taken only while no file has it (a hard link, atomic), so
    a file that appeared since the checks is not replaced either.
    """
    tag = f"{os.getpid()}.{uuid.uuid4().hex[:8]}"
    tmp = path.with_name(f".{path.stem}.{tag}{path.suffix}")
    try:
        save(tmp)
        if overwrite:
            tmp.replace(path)
            return
        try:
            os.link(tmp, path)  # fails when the name is taken: never replaces
            return
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links
            if not (path.exists() or path.is_symlink()):
                tmp.replace(path)
                return
        raise ValueError(
            f"the export file {path} exists and is not replaced: choose another output file "
            "or allow it with --overwrite (export_segmenter(overwrite=True))"
        )
    finally:
        tmp.unlink(missing_ok=True)


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
    """``advmim export CKPT OUT [--network transformer|cnn] [--torch_export] [--overwrite]``."""
    parser = argparse.ArgumentParser(
        prog="advmim export",
        description="Export one trained segmenter as a plain file loadable without Lightning.",
    )
    parser.add_argument("checkpoint", help="AdvMIMModule checkpoint (.ckpt)")
    parser.add_argument("output", help="file to write (.pt)")
    parser.add_argument("--network", choices=["transformer", "cnn"], default="transformer")
    parser.add_argument(
        "--torch_export",
        action="store_true",
        help="also write a torch.export program (.pt2, dynamic batch dimension)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the output files when they exist (never the input checkpoint or a run's "
        "checkpoints/)",
    )
    args = parser.parse_args(argv)
    # bad input (a missing checkpoint, an unwritable output) ends as one line, the way every
    # advmim command reports it (advmim_lightning.run.main.main)
    paths = export_segmenter(
        args.checkpoint, args.output, args.network, args.torch_export, args.overwrite
    )
    for path in paths:
        print(f"wrote {path}")
