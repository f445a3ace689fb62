"""Keep known, harmless third-party messages out of the command line's output.

Only messages listed here are dropped, each matched by its category and text, so every other
warning (the library's own and any new one from Lightning, torch or wandb) still shows:

- Lightning's promotional tips (``💡 Tip: ... litlogger`` / ``litmodels``), logged at INFO by
  ``rank_zero_info``;
- the ``FutureWarning`` that ``isinstance(treespec, LeafSpec)`` is deprecated, which torch >= 2.10
  raises inside Lightning 2.6's own pytree helper (nothing the user can change).

wandb's "The anonymous setting has no effect" warning is avoided at its source instead (see
``advmim_lightning.run.loggers.default_loggers``).
"""

from __future__ import annotations

import logging
import warnings

__all__ = ["KNOWN_THIRD_PARTY_WARNINGS", "quiet_known_noise"]

#: ``(category, message regex)`` of third-party warnings the command line ignores.
KNOWN_THIRD_PARTY_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
)
_LIGHTNING_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)


class _PromotionalTips(logging.Filter):
    """Drops Lightning's ``💡 Tip:`` advertisements; passes every other record."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


_TIP_FILTER = _PromotionalTips()


def quiet_known_noise() -> None:
    """Install the filters (idempotent: calling it again adds nothing)."""
    for category, message in KNOWN_THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in _LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if _TIP_FILTER not in logger.filters:
            logger.addFilter(_TIP_FILTER)
