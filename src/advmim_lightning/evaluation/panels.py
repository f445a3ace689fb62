"""``ValidationPanels``: a few overlay panels of validation cases, as PNG files and to loggers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np


class ValidationPanels(pl.Callback):
    """Log a few panels (image | ground truth | CNN | transformer) during validation.

    For the first ``num_cases`` validation cases the middle slice is drawn with
    :func:`advmim_lightning.evaluation.overlays.panel`; the rows are written, enlarged
    ``scale`` times with column titles and a legend of the module's class names
    (:func:`advmim_lightning.evaluation.overlays.figure`), as
    ``<log_dir>/panels/val_iter<iteration>.png`` and sent to every logger that can log images
    (wandb's ``log_image``).

    Args:
        num_cases: Validation cases drawn each time (0 disables).
        scale: Integer enlargement of the written PNG.
    """

    def __init__(self, num_cases: int = 3, scale: int = 2) -> None:
        super().__init__()
        if num_cases < 0:
            raise ValueError(f"num_cases must be >= 0, got {num_cases}")
        if scale < 1:
            raise ValueError(f"scale must be >= 1, got {scale}")
        self.num_cases = num_cases
        self.scale = scale
        self._titles: list[str] = []
        self._rows: list[np.ndarray] = []
        self.written: list[Path] = []

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._rows = []

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or len(self._rows) >= self.num_cases or not outputs:
            return
        from advmim_lightning.evaluation.overlays import panel

        depth = int(batch["image"].shape[1])
        k = depth // 2
        image = batch["image"][0, k].float().cpu().numpy()
        label = batch["label"][k].cpu().numpy() if "label" in batch else None
        predictions = {name: outputs[name][k].cpu().numpy() for name in ("cnn", "transformer")}
        self._rows.append(panel(image, label, predictions))
        self._titles = ["image", *(["ground truth"] if label is not None else []), "CNN"]
        self._titles.append("transformer")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        # trainer.log_dir broadcasts from rank 0: every rank must ask for it, or DDP hangs
        log_dir = trainer.log_dir or trainer.default_root_dir
        if not self._rows or not trainer.is_global_zero:
            return
        from advmim_lightning.evaluation.overlays import save_png

        iteration = getattr(pl_module, "iteration", trainer.global_step)
        out_dir = Path(log_dir) / "panels"
        class_names = getattr(pl_module, "class_names", None)
        path = save_png(
            self._rows,
            out_dir / f"val_iter{iteration:06d}.png",
            titles=self._titles,
            class_names=class_names,
            scale=self.scale,
        )
        self.written.append(path)
        for logger in trainer.loggers:
            log_image = getattr(logger, "log_image", None)
            if log_image is not None:
                log_image(
                    key="val/panels",
                    images=list(self._rows),
                    step=trainer.global_step,
                    caption=[" | ".join(self._titles)] * len(self._rows),
                )
