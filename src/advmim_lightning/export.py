"""``advmim export``: one trained segmenter as a plain file that loads without Lightning.

The exported file is a ``torch.save`` of plain data (loadable with ``weights_only=True``)::

    {"format": "advmim-segmenter", "version": 1, "network": "transformer",
     "class_path": "advmim_lightning.networks.swin_unet.SwinUNet", "init_args": {...},
     "state_dict": {...}, "num_classes": 4, "in_channels": 1, "image_size": [224, 224],
     "class_names": [...]}

:func:`load_segmenter` rebuilds the network from it (only for classes inside
``advmim_lightning``; nothing named in the file is imported from elsewhere). With
``--torch_export`` a ``torch.export`` program (``.pt2``) of the inference forward is written
too, for tools that run a graph without this library.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advmim_lightning.paths import ensure_writable_folder

FORMAT = "advmim-segmenter"
VERSION = 1


def read_checkpoint(path: str | Path, check_classes: bool = True) -> dict[str, Any]:
    """Load a Lightning checkpoint of ``AdvMIMModule`` safely (``weights_only=True``).

    Args:
        path: The checkpoint file.
        check_classes: Also apply :func:`refuse_untrusted_classes`.

    Raises:
        FileNotFoundError: When ``path`` does not exist.
        ValueError: When the file is not a readable checkpoint of this library, or names a
            class from an untrusted module.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"checkpoint {path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes): not a readable checkpoint")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated / foreign files
        first_line = next(iter(str(err).splitlines()), "") or "no message"
        raise ValueError(
            f"{path} is not a readable checkpoint (truncated, foreign or carrying pickled "
            f"objects that are refused): {type(err).__name__}: {first_line}"
        ) from err
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ValueError(f"{path} is not a Lightning checkpoint: it has no 'state_dict'")
    hparams = checkpoint.get("hyper_parameters")
    if not isinstance(hparams, dict) or "cnn" not in hparams:
        raise ValueError(f"{path} is not an AdvMIMModule checkpoint: no network specs inside")
    if check_classes:
        refuse_untrusted_classes(checkpoint, path)
    return checkpoint


def refuse_untrusted_classes(
    checkpoint: dict[str, Any], path: str | Path, overridden: Iterable[str] = ()
) -> None:
    """Refuse a checkpoint that names classes from untrusted modules.

    Lightning and LightningCLI import what the stored hyper-parameters name (``class_path``
    entries, dotted keys such as ``cnn.class_path``, a network given as a plain ``"pkg.Class"``
    string, and the ``_instantiator``), and importing runs a module's code. Every entry of the
    checkpoint except the tensors is searched: only classes under :func:`trusted_class_prefixes`
    pass, and only Lightning's own instantiator.

    Args:
        checkpoint: The loaded checkpoint dict.
        path: Its file, for the message.
        overridden: Top-level hyper-parameters the caller replaces (e.g. ``cnn`` given as an
            instance to ``load_from_checkpoint``); their stored specs are never imported.

    Raises:
        ValueError: Naming the file, the class and where it is stored.
    """
    trusted = trusted_class_prefixes()
    skip = set(overridden)
    searched = {
        key: (
            {k: v for k, v in value.items() if k not in skip}
            if key in _HPARAM_KEYS and isinstance(value, dict)
            else value
        )
        for key, value in checkpoint.items()
        if key not in ("state_dict", "optimizer_states")
    }
    for where, class_path in _class_paths(searched):
        if where.rpartition(".")[2] == "_instantiator":
            trusted_here = class_path == LIGHTNING_INSTANTIATOR
        else:
            trusted_here = class_path.startswith(trusted)
        if not trusted_here:
            raise ValueError(
                f"{path} names the class {class_path!r} at {where}; classes outside "
                f"{', '.join(trusted)} are not imported from a checkpoint (importing runs "
                "code). If you trust this file and the class is yours, allow its package: "
                f"{TRUSTED_CLASSES_ENV}=<package> (comma-separated)."
            )


#: The only ``_instantiator`` accepted: the one LightningCLI stores with the hyper-parameters.
LIGHTNING_INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"

#: Environment variable extending :func:`trusted_class_prefixes` (comma-separated packages).
TRUSTED_CLASSES_ENV = "ADVMIM_TRUSTED_CLASSES"

#: Checkpoint entries Lightning reads hyper-parameters from (current and older names).
_HPARAM_KEYS = ("hyper_parameters", "hparams", "module_arguments", "datamodule_hyper_parameters")
_CLASS_KEYS = ("class_path", "_class_path", "_instantiator")
_NETWORK_KEYS = ("cnn", "transformer")
_DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


def trusted_class_prefixes() -> tuple[str, ...]:
    """Module prefixes whose classes a checkpoint may name.

    ``advmim_lightning.`` and ``torch.nn.``, plus the packages listed in
    ``$ADVMIM_TRUSTED_CLASSES`` (``mypkg`` is read as ``mypkg.``).
    """
    extra = [p.strip() for p in os.environ.get(TRUSTED_CLASSES_ENV, "").split(",") if p.strip()]
    return ("advmim_lightning.", "torch.nn.", *(p if p.endswith(".") else p + "." for p in extra))


def _names_a_module(value: str) -> bool:
    """Whether ``value`` is ``pkg.name...`` with ``pkg`` importable (found, not imported)."""
    if not _DOTTED_NAME.fullmatch(value):
        return False
    try:
        return importlib.util.find_spec(value.partition(".")[0]) is not None
    except (ImportError, ValueError):
        return False


def _class_paths(tree: Any, where: str = "", class_typed: bool = False) -> list[tuple[str, str]]:
    """Every value that names a class to import, with where it is.

    Values of class-path keys anywhere, and dotted ``pkg.Name`` strings where jsonargparse
    reads a string as a class: a network field of the hyper-parameters and constructor
    arguments (``init_args``, ``dict_kwargs``).
    """
    found = []
    if isinstance(tree, dict):
        depth = where.count(".") + 1 if where else 0
        for key, value in tree.items():
            here = f"{where}.{key}" if where else str(key)
            name = str(key).rpartition(".")[2]
            if name in _CLASS_KEYS and value is not None:
                found.append((here, str(value)))
                continue
            network_field = depth == 1 and where in _HPARAM_KEYS and name in _NETWORK_KEYS
            typed = class_typed or network_field or name in ("init_args", "dict_kwargs")
            found += _class_paths(value, here, typed)
    elif isinstance(tree, (list, tuple)):
        for index, value in enumerate(tree):
            found += _class_paths(value, f"{where}[{index}]", class_typed)
    elif class_typed and isinstance(tree, str) and _names_a_module(tree):
        found.append((where, tree))
    return found


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
    if not class_path.startswith("advmim_lightning."):
        raise ValueError(f"{path} names {class_path!r}; only advmim_lightning classes are rebuilt")
    module_name, _, cls_name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), cls_name)
    net = cls(**payload["init_args"])
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
    # advmim command reports it (advmim_lightning.main.main)
    paths = export_segmenter(args.checkpoint, args.output, args.network, args.torch_export)
    for path in paths:
        print(f"wrote {path}")
