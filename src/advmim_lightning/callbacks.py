"""Lightning callbacks of the library: predictions to disk, validation panels, run checkpoints."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal
from weakref import proxy

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter

from advmim_lightning.lightning_private import _CheckpointFileHooks

log = logging.getLogger(__name__)

#: Characters kept as they are in prediction file names; every other one is escaped.
_KEPT = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.")
_SUFFIXES = {"nifti": ".nii.gz", "h5": ".h5"}
_MAX_NAME_BYTES = 255


def prediction_file_name(case_id: str, file_format: Literal["nifti", "h5"]) -> str:
    """The file name of a case's prediction: one name per case id, never shared.

    Letters, digits, ``_``, ``-`` and ``.`` are kept; every other character (``%`` included)
    becomes ``%XX`` per UTF-8 byte, as in URLs, and so does a leading ``.`` (no hidden files).
    The mapping is injective: ``case+8`` -> ``case%2B8.nii.gz`` and ``case_8`` ->
    ``case_8.nii.gz`` stay two files, and ``urllib.parse.unquote`` gives the case id back.

    Args:
        case_id: The case id (non-empty).
        file_format: ``"nifti"`` (``.nii.gz``) or ``"h5"`` (``.h5``).

    Raises:
        ValueError: On an empty case id, or when the name would be longer than a file name
            may be (255 bytes).
    """
    case_id = str(case_id)
    if not case_id:
        raise ValueError("a predicted case has an empty case id: it cannot name a file")
    escaped = "".join(
        char if char in _KEPT else "".join(f"%{b:02X}" for b in char.encode("utf-8"))
        for char in case_id
    )
    if escaped.startswith("."):
        escaped = "%2E" + escaped[1:]
    name = escaped + _SUFFIXES[file_format]
    if len(name.encode("utf-8")) > _MAX_NAME_BYTES:
        raise ValueError(
            f"the prediction file name of case {case_id!r} would be {len(name)} characters "
            f"long; file names are limited to {_MAX_NAME_BYTES} bytes"
        )
    return name


class PredictionWriter(BasePredictionWriter):
    """Save every predicted label volume next to the others, in the input's geometry.

    ``AdvMIMModule.predict_step`` returns the label volume in the input file's array order with
    that file's affine; this writer stores it as ``<output_dir>/<case_id>.nii.gz`` (NIfTI, with
    the input's affine, so it overlays the image in any viewer) or ``<case_id>.h5`` (key
    ``label``, plus ``spacing`` attribute) for the SSL4MIS h5 layout. Case ids are turned into
    file names by :func:`prediction_file_name` (unusual characters escaped, never merged).

    Before anything is written (at ``setup``), the writer refuses:

    - an output folder equal to or inside the dataset's root (``data.root``), its cache folder
      or a folder that holds an input file: predictions never land among the data;
    - case ids whose files would coincide (on a case-insensitive disk);
    - prediction files that already exist, unless ``overwrite=True``.

    Args:
        output_dir: Folder to write into (created when missing). ``None``: ``predictions/`` in
            the trainer's ``default_root_dir``, which the command line sets to the run folder
            (``<runs_dir>/<run_name>/predictions``).
        file_format: ``"auto"`` (NIfTI for the ``nifti`` and ``phantom`` layouts, h5 for
            ``acdc``), ``"nifti"`` or ``"h5"``.
        overwrite: Replace prediction files that already exist (off: refuse to start).

    Raises:
        ValueError: On an unknown ``file_format``.
    """

    def __init__(
        self,
        output_dir: str | None = None,
        file_format: Literal["auto", "nifti", "h5"] = "auto",
        overwrite: bool = False,
    ) -> None:
        super().__init__(write_interval="batch")
        if file_format not in ("auto", "nifti", "h5"):
            raise ValueError(f"file_format={file_format!r} is not one of ['auto', 'nifti', 'h5']")
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.file_format = file_format
        self.overwrite = overwrite
        self.written: list[Path] = []
        #: File name -> case id of the files this prediction run may write (checked at setup).
        self._planned: dict[str, str] = {}
        #: File name -> case id of the files this writer has written.
        self._own: dict[str, str] = {}

    def _format(self, trainer: pl.Trainer) -> str:
        if self.file_format != "auto":
            return self.file_format
        layout = getattr(trainer.datamodule, "layout", "nifti") if trainer.datamodule else "nifti"
        return "h5" if layout == "acdc" else "nifti"

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Resolve and check the output folder and the files to write (``predict`` only).

        Runs on every rank after the data module's ``setup`` and before any rank predicts
        (Lightning waits for all ranks after ``setup``), so all ranks see the same folder.

        Raises:
            ValueError: When the folder lies among the data, two cases would share a file, or
                files exist and ``overwrite`` is off.
            OSError: When the folder cannot be written.
        """
        if stage != "predict":
            return
        from advmim_lightning.paths import ensure_writable_folder

        if self.output_dir is None:
            self.output_dir = Path(trainer.default_root_dir) / "predictions"
        self._refuse_data_folders(trainer.datamodule)
        ensure_writable_folder(self.output_dir, "prediction folder (prediction_writer.output_dir)")
        self._planned, self._own = {}, {}
        self._plan(trainer)

    def _refuse_data_folders(self, datamodule: Any) -> None:
        assert self.output_dir is not None
        output = self.output_dir.resolve()
        protected: list[tuple[Path, str]] = []
        for attribute, what in (("root", "data.root"), ("cache_dir", "data.cache_dir")):
            folder = getattr(datamodule, attribute, None) if datamodule is not None else None
            if folder:
                protected.append((Path(folder).resolve(), f"the dataset folder ({what})"))
        dataset = getattr(datamodule, "predict_dataset", None)
        for volume in getattr(dataset, "volumes", []):
            source = Path(str(getattr(volume, "source", "")))
            if source.is_file():
                protected.append((source.resolve().parent, "the folder of the input images"))
        for folder, what in protected:
            if output == folder or output.is_relative_to(folder):
                raise ValueError(
                    f"prediction_writer.output_dir {self.output_dir} lies in {what} {folder}: "
                    "predictions are never written among the data; choose a folder outside "
                    "it (the default is <run folder>/predictions)"
                )

    def _plan(self, trainer: pl.Trainer) -> None:
        dataset = getattr(trainer.datamodule, "predict_dataset", None)
        case_ids = getattr(dataset, "case_ids", None)
        if callable(case_ids):
            self.plan(case_ids(), self._format(trainer))

    def plan(self, case_ids: Sequence[str], file_format: Literal["nifti", "h5"]) -> list[Path]:
        """Check the files of a prediction run before writing any (``setup`` calls it).

        Writes of these cases may then replace each other's files (under DDP the evaluation
        sampler pads the last shards with repeats, so two ranks may write the same case).

        Args:
            case_ids: Every case that will be predicted.
            file_format: ``"nifti"`` or ``"h5"``.

        Returns:
            The files that will be written.

        Raises:
            ValueError: When two cases would share a file (names differing only in case are one
                file on some disks) or files exist and ``overwrite`` is off.
        """
        if self.output_dir is None:
            self.output_dir = Path("predictions")
        planned: dict[str, str] = {}
        folded: dict[str, str] = {}
        for case_id in case_ids:
            name = prediction_file_name(case_id, file_format)
            other = folded.setdefault(name.casefold(), str(case_id))
            if other != str(case_id):
                raise ValueError(
                    f"cases {other!r} and {case_id!r} would both be written to "
                    f"{self.output_dir / name} (file names differing only in case are one "
                    "file on some disks); rename one of them"
                )
            planned[name] = str(case_id)
        existing = sorted(n for n in planned if (self.output_dir / n).exists())
        if existing and not self.overwrite:
            more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
            shown = ", ".join(existing[:3]) + more
            raise ValueError(
                f"prediction_writer.output_dir {self.output_dir} already holds "
                f"{len(existing)} of the {len(planned)} prediction files ({shown}); they are "
                "not replaced: choose another folder or allow it with "
                "--prediction_writer.overwrite true (PredictionWriter(overwrite=True))"
            )
        self._planned = planned
        self._own = {}
        return [self.output_dir / name for name in planned]

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
        """Write one ``predict_step`` output and return the file's path.

        Raises:
            ValueError: When the file is that of another case written by this writer, or
                exists from before (outside the cases checked at ``setup``) and ``overwrite``
                is off.
        """
        if self.output_dir is None:
            self.output_dir = Path("predictions")
        case_id = str(prediction["case_id"])
        name = prediction_file_name(case_id, file_format)  # type: ignore[arg-type]
        owner = self._own.setdefault(name, case_id)
        if owner != case_id:
            raise ValueError(
                f"cases {owner!r} and {case_id!r} would both be written to "
                f"{self.output_dir / name}; rename one of them"
            )
        # Files of the planned cases were absent (or may be replaced): a file there now is this
        # run's own, from another rank. Other files must not exist unless overwrite is on.
        replace = self.overwrite or self._planned.get(name) == case_id
        path = self.output_dir / name
        labels = np.asarray(prediction["prediction"], dtype=np.uint8)
        # Each write goes to its own temporary file (unique per call) and is moved into place,
        # so two writers never share a file and a reader never sees half a file.
        suffix = _SUFFIXES[file_format]
        tag = f"{os.getpid()}.{uuid.uuid4().hex[:8]}"
        tmp = self.output_dir / f".{name[: -len(suffix)]}.{tag}{suffix}"
        try:
            if file_format == "h5":
                import h5py

                with h5py.File(tmp, "w") as handle:
                    handle.create_dataset("label", data=labels, compression="gzip")
                    if prediction.get("spacing") is not None:
                        spacing = np.asarray(prediction["spacing"], dtype=np.float64)
                        handle.attrs["spacing"] = spacing
            else:
                import nibabel as nib

                affine = prediction.get("affine")
                affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
                nib.save(nib.Nifti1Image(labels, affine), tmp)
            if replace:
                tmp.replace(path)
            else:
                _move_without_replacing(tmp, path, case_id)
        finally:
            tmp.unlink(missing_ok=True)
        return path


def _move_without_replacing(tmp: Path, path: Path, case_id: str) -> None:
    """Give ``tmp`` the name ``path`` unless ``path`` exists (atomic where hard links exist)."""
    try:
        os.link(tmp, path)  # fails when the file exists: never replaces it
    except FileExistsError:
        pass
    except OSError:  # a file system without hard links
        if not path.exists():
            tmp.replace(path)
            return
    else:
        return
    raise ValueError(
        f"{path} exists and is not replaced (the prediction of case {case_id!r}); choose "
        "another prediction_writer.output_dir or allow it with --prediction_writer.overwrite true"
    )


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


class RunCheckpoint(_CheckpointFileHooks):
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
        self._last_refreshed_step = -1

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
        if trainer.fast_dev_run:
            # Lightning 2.6 saves last.ckpt here even under fast_dev_run, which is meant to
            # save nothing: a smoke test would leave a 1-step "run" for --ckpt_path last
            return
        super().on_train_end(trainer, pl_module)
        self._refresh_last(trainer)

    def last_checkpoint_files(self, trainer: pl.Trainer) -> set[str]:
        """``last*.ckpt`` and the SLURM requeue checkpoints: ``--ckpt_path last`` takes the newest.

        On SLURM, Lightning answers the preemption signal (``#SBATCH --signal=SIGUSR1@...``) by
        saving ``hpc_ckpt_<n>.ckpt`` in the run folder and requeueing the job; counting those
        files here makes a requeued ``--ckpt_path last`` resume from the newest state.
        """
        found = super().last_checkpoint_files(trainer)
        folder = Path(trainer.default_root_dir)
        return found | {os.path.normpath(p) for p in folder.glob("hpc_ckpt_*.ckpt")}

    def _refresh_last(self, trainer: pl.Trainer) -> None:
        if not self.save_last or trainer.fast_dev_run or trainer.sanity_checking:
            return
        step = trainer.global_step
        if trainer.state.fn != "fit" or step in (self.last_step_saved, self._last_refreshed_step):
            return
        saved_step = self.last_step_saved
        self.save_last_checkpoint_now(trainer)
        # Refreshing last.ckpt alone must not count as "saved at this step": ModelCheckpoint
        # would then skip the top-k (best) checkpoint of a validation at the same step, and
        # with --checkpoint_every dividing val_check_interval no best-*.ckpt would ever appear.
        self.last_step_saved = saved_step
        self._last_refreshed_step = step

    def write_checkpoint_file(self, trainer: pl.Trainer, filepath: str) -> None:
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
        self.record_saved_checkpoint(trainer, filepath)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))
