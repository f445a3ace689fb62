"""The old path of :mod:`advmim_lightning.commands.export` (``advmim export``), kept importable."""

from __future__ import annotations

from advmim_lightning.commands.export import *  # noqa: F403  (every name it offers)
from advmim_lightning.commands.export import __all__  # noqa: F401
