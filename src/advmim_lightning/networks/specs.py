"""Network specs: ``{"class_path", "init_args"}`` records of networks, and the trust rule.

Files name classes (network specs, LightningCLI's ``class_path`` entries), and importing a
class runs its module's code. One rule, :func:`is_trusted_class`, decides every such name:

- **Named** (a checkpoint whose hyper-parameters Lightning or LightningCLI would import):
  classes under :func:`trusted_class_prefixes` (``advmim_lightning``, ``torch.nn`` and the
  packages of ``$ADVMIM_TRUSTED_CLASSES``).
- **Rebuilt** (this library imports and instantiates the class itself: a network spec stored
  in a checkpoint's hyper-parameters, an ``advmim export`` file): classes in
  ``advmim_lightning`` only. A network of your own is passed as an instance instead.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import Any

from torch import nn

#: Environment variable extending :func:`trusted_class_prefixes` (comma-separated packages).
TRUSTED_CLASSES_ENV = "ADVMIM_TRUSTED_CLASSES"

#: The package whose classes this library rebuilds itself from stored specs.
REBUILT_PREFIX = "advmim_lightning."


def trusted_class_prefixes() -> tuple[str, ...]:
    """Module prefixes whose classes a checkpoint may name.

    ``advmim_lightning.`` and ``torch.nn.``, plus the packages listed in
    ``$ADVMIM_TRUSTED_CLASSES`` (``mypkg`` is read as ``mypkg.``).
    """
    extra = [p.strip() for p in os.environ.get(TRUSTED_CLASSES_ENV, "").split(",") if p.strip()]
    return (REBUILT_PREFIX, "torch.nn.", *(p if p.endswith(".") else p + "." for p in extra))


def is_trusted_class(class_path: str, rebuild: bool = False) -> bool:
    """Whether a class path read from a file may be imported (the one trust rule).

    Args:
        class_path: ``package.module.Class``.
        rebuild: ``True`` where this library imports and instantiates the class itself
            (network specs, exports): only ``advmim_lightning`` classes. ``False`` where the
            file only names it: the classes under :func:`trusted_class_prefixes`.
    """
    if rebuild:
        return class_path.startswith(REBUILT_PREFIX)
    return class_path.startswith(trusted_class_prefixes())


def rebuild(class_path: str, init_args: Mapping[str, Any]) -> Any:
    """``Class(**init_args)`` for a class path :func:`is_trusted_class` allows rebuilding.

    Callers check first and refuse with a message of their own; this refuses anyway.

    Raises:
        ValueError: For a class outside ``advmim_lightning``.
    """
    if not is_trusted_class(class_path, rebuild=True):
        raise ValueError(f"refusing to rebuild {class_path!r}: only advmim_lightning classes are")
    module_name, _, cls_name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(**dict(init_args))


def build_network(
    net: nn.Module | Mapping[str, Any] | None, default: type[nn.Module], **kwargs: Any
) -> nn.Module:
    """The network an ``AdvMIMModule`` argument stands for.

    Args:
        net: An instance (used as it is), a stored ``{"class_path", "init_args"}`` spec
            (rebuilt for ``advmim_lightning`` classes only), or None (``default(**kwargs)``).
        default: The class built when ``net`` is None.

    Raises:
        ValueError: For a spec of a class outside ``advmim_lightning`` or without init_args.
        TypeError: For anything else.
    """
    if net is None:
        return default(**kwargs)
    if isinstance(net, nn.Module):
        return net
    if isinstance(net, Mapping) and "class_path" in net:
        class_path = str(net["class_path"])
        if not is_trusted_class(class_path, rebuild=True):
            raise ValueError(
                f"refusing to import network class {class_path!r} from a stored spec: only "
                "classes in advmim_lightning are rebuilt automatically. Pass the network "
                "instance yourself (e.g. load_from_checkpoint(path, cnn=MyNet(...)))."
            )
        if net.get("init_args") is None:
            raise ValueError(f"the stored spec of {class_path!r} has no init_args to rebuild it")
        return rebuild(class_path, net["init_args"])
    raise TypeError(f"expected an nn.Module, a class_path spec or None, got {type(net).__name__}")


def network_spec(net: nn.Module) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` of a network (``init_args``: its ``config``, or None)."""
    cls = type(net)
    config = getattr(net, "config", None)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": config}
