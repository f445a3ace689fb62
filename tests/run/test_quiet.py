"""Known third-party noise is kept out of the command line's output; everything else shows."""

from __future__ import annotations

import logging
import warnings

from advmim_lightning.run.loggers import default_loggers as _default_loggers
from advmim_lightning.run.quiet import quiet_known_noise


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_lightning_tips_are_dropped_and_other_info_passes():
    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    records = _Records()
    logger.addHandler(records)
    try:
        quiet_known_noise()
        quiet_known_noise()  # idempotent
        rank_zero_info("💡 Tip: For seamless cloud logging, try installing [litlogger]")
        rank_zero_info("GPU available: False, used: False")
    finally:
        logger.removeHandler(records)
    assert records.messages == ["GPU available: False, used: False"]
    assert sum(type(f).__name__ == "_PromotionalTips" for f in logger.filters) == 1


def test_known_deprecation_is_ignored_and_other_warnings_still_show():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_known_noise()
        warnings.warn(
            "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, "
            "TreeSpec) and treespec.is_leaf()` instead.",
            FutureWarning,
            stacklevel=1,
        )
        warnings.warn("something else is deprecated", FutureWarning, stacklevel=1)
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", UserWarning, stacklevel=1)
    assert [(w.category, str(w.message)) for w in caught] == [
        (FutureWarning, "something else is deprecated"),
        (UserWarning, "`isinstance(treespec, LeafSpec)` is deprecated"),
    ]


def test_the_wandb_logger_leaves_the_unset_anonymous_setting_out(tmp_path):
    loggers = _default_loggers(tmp_path / "run", "run", "offline", "project")
    wandb_init = loggers[-1]._wandb_init
    assert "anonymous" not in wandb_init and wandb_init["project"] == "project"
