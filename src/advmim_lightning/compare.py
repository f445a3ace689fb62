"""The old path of :mod:`advmim_lightning.commands.compare` (``advmim compare``)."""

from __future__ import annotations

from advmim_lightning.commands.compare import ComparisonRows, main, run_comparison
from advmim_lightning.commands.compare_jobs import run_job

__all__ = ["ComparisonRows", "main", "run_comparison", "run_job"]

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
