"""The old path of :mod:`advmim_lightning.commands.demo`: ``python -m advmim_lightning.demo``."""

from __future__ import annotations

from advmim_lightning.commands.demo import OVERLAY_SCALE, OVERLAY_TITLES, main, write_overlay

__all__ = ["OVERLAY_SCALE", "OVERLAY_TITLES", "main", "write_overlay"]

if __name__ == "__main__":  # pragma: no cover
    main()
