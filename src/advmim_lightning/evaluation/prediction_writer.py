"""``PredictionWriter``: each case's predicted label volume written to its own file."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter

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

    - an output folder equal to or inside the dataset's root (``data.root``), its cache folder,
      the second (unlabeled) source's root or cache folder, or a folder that holds an input
      file: predictions never land among the data;
    - case ids whose files would coincide (on a case-insensitive disk);
    - prediction files that already exist, unless ``overwrite=True``.

    Args:
        output_dir: Folder to write into (created when missing). ``None``: ``predictions/`` in
            the trainer's ``default_root_dir``, which the command line sets to the run folder
            (``<runs_dir>/<run_name>/predictions``).
        file_format: ``"auto"`` (NIfTI for the ``nifti``, ``images`` and ``phantom`` layouts,
            h5 for ``acdc``: the layout of the evaluated source), ``"nifti"`` or ``"h5"``.
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
        datamodule = trainer.datamodule
        layout = getattr(datamodule, "eval_layout", getattr(datamodule, "layout", "nifti"))
        layout = layout if datamodule is not None else "nifti"
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
        from advmim_lightning.run.folders import ensure_writable_folder

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
        for attribute, what in (("root", "data.root"), ("cache_dir", "data.settings.cache_dir")):
            folder = getattr(datamodule, attribute, None) if datamodule is not None else None
            if folder:
                protected.append((Path(folder).resolve(), f"the dataset folder ({what})"))
        second = getattr(datamodule, "unlabeled_source", None) if datamodule is not None else None
        for folder, what in (
            (getattr(second, "path", None), "the unlabeled source's folder"),
            (getattr(getattr(second, "settings", None), "cache_dir", None), "its cache folder"),
        ):
            if folder:
                protected.append((Path(folder).resolve(), f"{what} (data.unlabeled_*)"))
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
