"""Lightning callbacks of the library: predictions to disk, validation panels, run checkpoints."""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal
from weakref import proxy

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint

log = logging.getLogger(__name__)

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class PredictionWriter(BasePredictionWriter):
    """Save every predicted label volume next to the others, in the input's geometry.

    ``AdvMIMModule.predict_step`` returns the label volume in the input file's array order with
    that file's affine; this writer stores it as ``<output_dir>/<case_id>.nii.gz`` (NIfTI, with
    the input's affine, so it overlays the image in any viewer) or ``<case_id>.h5`` (key
    ``label``, plus ``spacing`` attribute) for the SSL4MIS h5 layout.

    Args:
        output_dir: Folder to write into (created when missing).
        file_format: ``"auto"`` (NIfTI for the ``nifti`` and ``phantom`` layouts, h5 for
            ``acdc``), ``"nifti"`` or ``"h5"``.

    Raises:
        ValueError: On an unknown ``file_format``.
    """

    def __init__(
        self,
        output_dir: str = "predictions",
        file_format: Literal["auto", "nifti", "h5"] = "auto",
    ) -> None:
        super().__init__(write_interval="batch")
        if file_format not in ("auto", "nifti", "h5"):
            raise ValueError(f"file_format={file_format!r} is not one of ['auto', 'nifti', 'h5']")
        self.output_dir = Path(output_dir)
        self.file_format = file_format
        self.written: list[Path] = []

    def _format(self, trainer: pl.Trainer) -> str:
        if self.file_format != "auto":
            return self.file_format
        layout = getattr(trainer.datamodule, "layout", "nifti") if trainer.datamodule else "nifti"
        return "h5" if layout == "acdc" else "nifti"

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        from advmim_lightning.paths import ensure_writable_folder

        ensure_writable_folder(self.output_dir, "prediction folder (prediction_writer.output_dir)")

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        path = self.write(prediction, self._format(trainer))
        self.written.append(path)
        log.info("wrote %s", path)

    def write(self, prediction: dict[str, Any], file_format: str) -> Path:
        """Write one ``predict_step`` output and return the file's path."""
        name = _SAFE_NAME.sub("_", str(prediction["case_id"])) or "case"
        labels = np.asarray(prediction["prediction"], dtype=np.uint8)
        affine = prediction.get("affine")
        affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
        # Under DDP the evaluation sampler pads the last shards with repeats, so two ranks may
        # write the same case at the same moment: each write goes to its own temporary file
        # (unique per call) and is renamed into place, so the writers never share a file and
        # the last rename leaves one complete copy (the ranks' predictions are identical).
        tmp_tag = f"{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        if file_format == "h5":
            import h5py

            path = self.output_dir / f"{name}.h5"
            tmp = self.output_dir / f".{name}.{tmp_tag}.h5"
            try:
                with h5py.File(tmp, "w") as handle:
                    handle.create_dataset("label", data=labels, compression="gzip")
                    if prediction.get("spacing") is not None:
                        spacing = np.asarray(prediction["spacing"], dtype=np.float64)
                        handle.attrs["spacing"] = spacing
                tmp.replace(path)
            finally:
                tmp.unlink(missing_ok=True)
            return path
        import nibabel as nib

        path = self.output_dir / f"{name}.nii.gz"
        tmp = self.output_dir / f".{name}.{tmp_tag}.nii.gz"
        try:
            nib.save(nib.Nifti1Image(labels, affine), tmp)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        return path


class ValidationPanels(pl.Callback):
    """Log a few panels (image | ground truth | CNN | transformer) during validation.

    For the first ``num_cases`` validation cases the middle slice is drawn with
    :func:`advmim_lightning.visualize.panel`; the rows are written, enlarged ``scale`` times
    with column titles and a legend of the module's class names
    (:func:`advmim_lightning.visualize.figure`), as
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
        from advmim_lightning.visualize import panel

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
        from advmim_lightning.visualize import save_png

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


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that keeps ``last.ckpt`` current and writes every file atomically.

    Lightning 2.6 refreshes ``last.ckpt`` only when a top-k checkpoint was written at the same
    step, so a run whose score stops improving would resume from an old state. This callback
    also writes ``last.ckpt`` after every validation and when training ends (the module stops
    itself after ``max_iterations``), which is what ``--ckpt_path last`` resumes from.
    Each file is written under a temporary name and renamed into place, so a kill during saving
    never leaves a truncated checkpoint behind.

    Args:
        every_n_iterations: Also refresh ``last.ckpt`` after every this many training
            iterations (the module's :attr:`~advmim_lightning.AdvMIMModule.iteration`, not
            optimiser steps). ``0``: only after validation and at the end of training.
        **kwargs: ``ModelCheckpoint`` arguments (``dirpath``, ``monitor``, ``save_last``, ...).

    Raises:
        ValueError: If ``every_n_iterations < 0``.
    """

    def __init__(self, *args: Any, every_n_iterations: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if every_n_iterations < 0:
            raise ValueError(f"every_n_iterations must be >= 0, got {every_n_iterations}")
        self.every_n_iterations = every_n_iterations

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        iteration = getattr(pl_module, "iteration", trainer.global_step)
        if self.every_n_iterations and iteration % self.every_n_iterations == 0:
            self._refresh_last(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        self._refresh_last(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._refresh_last(trainer)

    def _refresh_last(self, trainer: pl.Trainer) -> None:
        if not self.save_last or trainer.fast_dev_run or trainer.sanity_checking:
            return
        if trainer.state.fn != "fit" or self._last_global_step_saved == trainer.global_step:
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        # Non-finite losses are checked on logging iterations; check the iterations since the
        # last one now, so a run that went NaN raises instead of overwriting last.ckpt.
        check_nonfinite_now = getattr(trainer.lightning_module, "check_nonfinite_now", None)
        if callable(check_nonfinite_now) and trainer.state.fn == "fit":
            check_nonfinite_now()
        tmp = f"{filepath}.tmp"
        trainer.save_checkpoint(tmp, self.save_weights_only)
        if trainer.is_global_zero:
            os.replace(tmp, filepath)
        trainer.strategy.barrier("RunCheckpoint._save_checkpoint")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))
