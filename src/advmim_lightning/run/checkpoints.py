"""Checkpoint files: reading them safely, and refusing the classes they name that the trust
rule (:func:`advmim_lightning.networks.specs.is_trusted_class`) does not allow.

The state-dict hooks at the end store ``AdvMIMModule``'s networks under their own names and
its iteration count with the weights, the run's one stored count.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advmim_lightning.networks.specs import (
    TRUSTED_CLASSES_ENV,
    is_trusted_class,
    trusted_class_prefixes,
)

#: The only ``_instantiator`` accepted: the one LightningCLI stores with the hyper-parameters.
LIGHTNING_INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"

#: The networks a checkpoint stores a spec of (hyper-parameter names).
NETWORK_KEYS = ("cnn", "transformer")

#: Checkpoint entries Lightning reads hyper-parameters from (current and older names).
_HPARAM_KEYS = ("hyper_parameters", "hparams", "module_arguments", "datamodule_hyper_parameters")
_CLASS_KEYS = ("class_path", "_class_path", "_instantiator")
_DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


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
            trusted_here = is_trusted_class(class_path)
        if not trusted_here:
            raise ValueError(
                f"{path} names the class {class_path!r} at {where}; classes outside "
                f"{', '.join(trusted_class_prefixes())} are not imported from a checkpoint "
                "(importing runs code). If you trust this file and the class is yours, allow "
                f"its package: {TRUSTED_CLASSES_ENV}=<package> (comma-separated)."
            )


def require_own_networks(
    checkpoint: Mapping[str, Any], path: str | Path, given: Mapping[str, Any]
) -> None:
    """Ask for the instance of a stored network from outside the library that is not given."""
    hparams = checkpoint.get("hyper_parameters") or {}
    for name in NETWORK_KEYS:
        spec = hparams.get(name)
        if name in given or not isinstance(spec, Mapping):
            continue
        class_path = str(spec.get("class_path", ""))
        if class_path and not is_trusted_class(class_path, rebuild=True):
            raise ValueError(
                f"{path} names the class {class_path!r} as its {name} network, from outside "
                "advmim_lightning; networks are never rebuilt from a checkpoint: pass the "
                "instance, built as for training (the weights come from the checkpoint): "
                f"AdvMIMModule.load_from_checkpoint({str(path)!r}, {name}=MyNet(...)). "
                "(ADVMIM_TRUSTED_CLASSES does not rebuild networks; it only lets a checkpoint "
                "you trust name other classes of your packages.)"
            )


class SafeLoading:
    """``load_from_checkpoint`` for a LightningModule, after checking the file safely.

    A local file is read with ``weights_only=True`` first and refused (naming it) when it is
    truncated, not an ``AdvMIMModule`` checkpoint, or names classes outside the trusted ones
    that would be imported to rebuild it. A file object or a remote URL goes to Lightning.
    """

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | Path, *args: Any, **kwargs: Any) -> Any:
        if isinstance(checkpoint_path, (str, Path)):
            checkpoint = read_checkpoint(checkpoint_path, check_classes=False)
            require_own_networks(checkpoint, checkpoint_path, given=kwargs)
            refuse_untrusted_classes(checkpoint, checkpoint_path, overridden=kwargs)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)  # type: ignore[misc]


#: The AdvMIMModule's children whose weights are saved under their own names (``cnn.*``,
#: not ``model.cnn.*``): the checkpoint format stays that of the published runs.
_MODEL_PARTS = ("cnn", "transformer", "disc_cnn", "disc_transformer")


def save_model_state(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any]
) -> None:
    """State-dict post-hook of ``AdvMIMModule``: the model's networks under their own names
    (``<prefix>cnn.*`` ...) and the iteration count as ``<prefix>iteration`` (int64), the
    run's one stored count."""
    inner = prefix + "model."
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner) :]] = state_dict.pop(key)
    state_dict[prefix + "iteration"] = torch.tensor(module.iteration, dtype=torch.int64)


def load_model_state(
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: dict[str, Any],
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    """Load pre-hook of ``AdvMIMModule``, the inverse of :func:`save_model_state`."""
    value = state_dict.pop(prefix + "iteration", None)
    if value is not None:
        module.iteration = int(value)
    for key in list(state_dict):
        rest = key[len(prefix) :]
        if key.startswith(prefix) and rest.split(".", 1)[0] in _MODEL_PARTS:
            state_dict[prefix + "model." + rest] = state_dict.pop(key)


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
            network_field = depth == 1 and where in _HPARAM_KEYS and name in NETWORK_KEYS
            typed = class_typed or network_field or name in ("init_args", "dict_kwargs")
            found += _class_paths(value, here, typed)
    elif isinstance(tree, (list, tuple)):
        for index, value in enumerate(tree):
            found += _class_paths(value, f"{where}[{index}]", class_typed)
    elif class_typed and isinstance(tree, str) and _names_a_module(tree):
        found.append((where, tree))
    return found
