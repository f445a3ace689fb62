"""The SSL4MIS ACDC layout: h5 slices for training, h5 volumes for validation and test.

::

    root/
      train_slices.list   # slice names, e.g. patient001_frame01_slice_0
      val.list            # volume names, e.g. patient091_frame01
      test.list
      data/slices/<slice name>.h5   # "image" H x W float, "label" H x W uint8
      data/<volume name>.h5         # "image" D x H x W float, "label" D x H x W uint8

Optional h5 attributes (written by :mod:`advmim_lightning.data.prepare`): ``spacing`` (three
floats, mm, in ``(D, H, W)`` order) and ``affine`` (4 x 4, voxel ``(d, h, w)`` to world). Without
them spacing is ``(1, 1, 1)`` and ``spacing_known`` is False.

A patient (``data.case_pattern``, default ``patientNNN``) is in one list only: the split is by
patient, so ``patient005_frame01`` in ``val.list`` and ``patient005_frame12`` in ``test.list``
is refused, as is a training patient in ``val.list`` or ``test.list``.

Training slices are regrouped into their volumes (``<volume>_slice_<k>``) so that intensity
normalisation is per volume, as in the original preprocessing (min-max of data that is already
min-max normalised is the identity).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import h5py
import numpy as np

from advmim_lightning.data.arguments import check_root
from advmim_lightning.data.cases import (
    DEFAULT_ACDC_CASE_PATTERN,
    CaseGrouper,
    CaseSplit,
    first_cases,
)
from advmim_lightning.data.settings import SourceSettings
from advmim_lightning.data.source import DataSource, EvalSplit, TrainingPools
from advmim_lightning.data.types import Volume
from advmim_lightning.data.validation import (
    DataValidationError,
    check_file_exists,
    check_finite,
    check_label_values,
    check_no_duplicates,
    check_non_empty,
    check_num_classes,
    check_same_shape,
)

__all__ = ["ACDC_CLASS_NAMES", "ACDCSource", "read_h5", "read_list_file"]

ACDC_CLASS_NAMES = ["background", "RV", "Myo", "LV"]
_SLICE_NAME = re.compile(r"^(?P<volume>.+)_slice_(?P<index>\d+)$")


def read_list_file(path: str | Path) -> list[str]:
    """Reads an SSL4MIS ``.list`` file: one name per line, blank lines ignored.

    A trailing ``.h5`` on a name is removed.

    Raises:
        DataValidationError: If the file is missing or unreadable, or lists a name twice.
    """
    p = check_file_exists(path, "list")
    try:
        lines = p.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataValidationError(f"Unreadable list file {p}: {err}; expected text.") from err
    names = [line.strip().removesuffix(".h5") for line in lines if line.strip()]
    check_no_duplicates(names, str(p), "name")
    return names


def read_h5(
    path: Path, num_classes: int, *, ndim: int, read_label: bool, require_label: bool
) -> tuple[np.ndarray, np.ndarray | None, tuple[float, float, float] | None, np.ndarray | None]:
    """Reads and checks one SSL4MIS h5 file.

    Args:
        path: The file.
        num_classes: Labels must lie in ``[0, num_classes)``.
        ndim: Expected number of image dimensions (2 for slices, 3 for volumes).
        read_label: Whether to read the ``label`` dataset.
        require_label: Whether a missing ``label`` dataset is an error.

    Returns:
        ``(image, label, spacing, affine)``; image float32 with ``ndim`` axes; label or None;
        spacing (``D, H, W``) and affine from the attributes, or None.

    Raises:
        DataValidationError: Missing or unreadable file, missing key, wrong number of axes,
            image/label shape mismatch, non-finite voxels, label values out of range, or a
            malformed ``spacing``/``affine`` attribute.
    """
    check_file_exists(path, "h5")
    try:
        with h5py.File(path, "r") as f:
            if "image" not in f:
                raise DataValidationError(
                    f"{path}: no 'image' dataset (found keys {sorted(f.keys())}); expected "
                    "'image' and 'label'."
                )
            image = np.asarray(f["image"][()], dtype=np.float32)
            label = None
            if read_label and "label" in f:
                label = np.asarray(f["label"][()])
            elif read_label and require_label:
                raise DataValidationError(
                    f"{path}: no 'label' dataset (found keys {sorted(f.keys())}); expected "
                    "'image' and 'label'."
                )
            spacing_attr = f.attrs.get("spacing")
            affine_attr = f.attrs.get("affine")
    except OSError as err:
        raise DataValidationError(f"Unreadable h5 file {path}: {err}; expected HDF5.") from err
    if image.ndim != ndim:
        raise DataValidationError(
            f"{path}: image has shape {image.shape} ({image.ndim} axes); expected {ndim} axes "
            f"({'H x W slice' if ndim == 2 else 'D x H x W volume'})."
        )
    check_non_empty(image.shape, str(path))
    check_finite(image, str(path))
    if label is not None:
        check_same_shape(image.shape, label.shape, str(path), str(path))
        check_label_values(label, num_classes, str(path))
    spacing = None
    if spacing_attr is not None:
        values = np.asarray(spacing_attr, dtype=np.float64).ravel()
        if values.size != 3 or not np.all(np.isfinite(values)) or np.any(values <= 0):
            raise DataValidationError(
                f"{path}: attribute 'spacing' is {values.tolist()}; expected three positive "
                "numbers (D, H, W) in mm."
            )
        spacing = (float(values[0]), float(values[1]), float(values[2]))
    affine = None
    if affine_attr is not None:
        affine = np.asarray(affine_attr, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise DataValidationError(
                f"{path}: attribute 'affine' has shape {affine.shape}; expected a finite 4 x 4 "
                "matrix."
            )
    return image, label, spacing, affine


def _geometry(
    spacing: tuple[float, float, float] | None, affine: np.ndarray | None
) -> tuple[tuple[float, float, float], bool, np.ndarray]:
    if affine is None:
        affine = np.diag([*(spacing or (1.0, 1.0, 1.0)), 1.0])
    return (spacing or (1.0, 1.0, 1.0)), spacing is not None, affine


class ACDCSource(DataSource):
    """Reads the SSL4MIS ACDC layout (see the module docstring): ``layout="acdc"``.

    The labeled pool is the slices of the first ``labeled_cases`` patients in
    ``train_slices.list`` order (or of the listed patients); the other listed training patients
    form the unlabeled pool. Validation and test volumes come from ``val.list``/``test.list``;
    the lists define the split (no split file).

    Args:
        root: Dataset root (``~`` is expanded).
        settings: The shared :class:`~advmim_lightning.data.settings.SourceSettings`; ACDC
            uses ``case_pattern`` (None: ``r"^(patient\\d+)"``), ``normalization``
            (``"minmax"`` is ACDC's), ``window_level`` and ``window_width``, refuses
            ``split_file`` (the lists define the split) and ignores the others.

    Raises:
        ValueError: On an empty ``root`` or a ``split_file``.
        DataValidationError: At :meth:`open`, if ``root`` is not a folder.
    """

    layout = "acdc"

    def __init__(self, root: str, settings: SourceSettings | None = None) -> None:
        self.root = check_root(root, self.layout)
        settings = SourceSettings() if settings is None else settings
        if settings.split_file is not None:
            raise ValueError(
                f"split_file is not used by the acdc layout (its lists define the split); got "
                f"split_file={settings.split_file!r}"
            )
        super().__init__(settings)
        if self.settings.case_pattern is None:
            self.settings = dataclasses.replace(
                self.settings, case_pattern=DEFAULT_ACDC_CASE_PATTERN
            )
            self.grouper = CaseGrouper(DEFAULT_ACDC_CASE_PATTERN)
        self.in_channels = 1
        self._lists: dict[str, list[str]] = {}
        # the labels read so far: highest value, its file, number of volumes
        self._labels_read: tuple[int, str, int] = (-1, "", 0)

    def open(self) -> None:
        """Checks the root folder; names the classes (ACDC's four, or ``class<i>``)."""
        self.path = self._open_root(
            self.root, "ACDC", "the SSL4MIS layout with train_slices.list and data/"
        )
        self.class_names = (
            list(ACDC_CLASS_NAMES)
            if self.num_classes == 4
            else ["background", *(f"class{i}" for i in range(1, self.num_classes))]
        )

    def missing_cases_hint(self, which: EvalSplit) -> str:
        return "names in val.list" if which == "val" else "names in test.list"

    def list_names(self, which: str) -> list[str]:
        """Names in ``train_slices.list`` (``"train"``), ``val.list`` or ``test.list``."""
        if which not in self._lists:
            filename = "train_slices.list" if which == "train" else f"{which}.list"
            self._lists[which] = read_list_file(self.path / filename)
        return self._lists[which]

    def case_split(self) -> CaseSplit:
        """Labeled/unlabeled patients from ``train_slices.list``, val/test from their lists.

        Raises:
            DataValidationError: On a patient in two lists (see
                :meth:`_check_patients_in_one_list`), or labeled cases that are not listed.
        """
        self._check_patients_in_one_list()
        train_list = str(self.path / "train_slices.list")
        train = self.list_names("train")
        order = list(dict.fromkeys(self.grouper(n, train_list) for n in train))
        labeled_cases = self.labeled_cases
        if isinstance(labeled_cases, int):
            labeled = first_cases(train, self.grouper, labeled_cases, train_list)
        else:
            missing = [c for c in labeled_cases if c not in set(order)]
            if missing:
                raise DataValidationError(
                    f"{train_list}: labeled case(s) {missing[:10]} are not listed; expected "
                    f"case ids among {order[:3]}..."
                )
            labeled = list(labeled_cases)
        unlabeled = [c for c in order if c not in set(labeled)]
        evals = {}
        for which in ("val", "test"):
            source = str(self.path / f"{which}.list")
            names = self.list_names(which)
            evals[which] = list(dict.fromkeys(self.grouper(n, source) for n in names))
        return CaseSplit(
            labeled=labeled,
            unlabeled=unlabeled,
            val=evals["val"],
            test=evals["test"],
            source=str(self.path),
        )

    def _check_patients_in_one_list(self) -> None:
        """Refuses a patient (case id) named in two of the three lists.

        Works per patient, not per name: ``patient005_frame01`` in ``val.list`` and
        ``patient005_frame12`` in ``test.list`` put one patient in two splits, as does a
        patient with training slices and a validation volume.

        Raises:
            DataValidationError: Naming the patient, the two lists and the names in each.
        """
        names_by_list: dict[str, dict[str, list[str]]] = {}
        for which, filename in (
            ("train", "train_slices.list"),
            ("val", "val.list"),
            ("test", "test.list"),
        ):
            source = str(self.path / filename)
            for name in self.list_names(which):
                case = self.grouper(name, source)
                names_by_list.setdefault(case, {}).setdefault(filename, []).append(name)
        for case, lists in names_by_list.items():
            if len(lists) < 2:
                continue
            found = "; ".join(
                f"{filename}: {', '.join(names[:3])}"
                + (f" and {len(names) - 3} more" if len(names) > 3 else "")
                for filename, names in lists.items()
            )
            raise DataValidationError(
                f"{self.path}: patient {case!r} is in {' and '.join(lists)} ({found}); "
                "expected each patient in one split (the split is by patient: case_pattern "
                f"'{self.grouper.pattern}')."
            )

    def _slice_file(self, name: str) -> Path:
        return self.path / "data" / "slices" / f"{name}.h5"

    def load_training(self, split: CaseSplit) -> TrainingPools:
        """Reads every listed training slice once (labels only for the labeled pool)."""
        train_list = str(self.path / "train_slices.list")
        labeled_groups = set(split.labeled)
        pools = TrainingPools()
        for is_labeled in (True, False):
            names = [
                n
                for n in self.list_names("train")
                if (self.grouper(n, train_list) in labeled_groups) == is_labeled
            ]
            volumes, slices = self._assemble(names, is_labeled)
            if is_labeled:
                pools.labeled_volumes, pools.labeled_slices = volumes, slices
            else:
                pools.unlabeled_volumes, pools.unlabeled_slices = volumes, slices
        self._check_classes_present(pools.labeled_volumes)
        return pools

    def _check_classes_present(self, volumes: list[Volume]) -> None:
        """Refuses a ``num_classes`` above the highest label value read so far, plus one.

        ACDC has no metadata naming its classes, so the labels themselves are the record:
        with ``num_classes=5`` on ACDC's 4 classes, class 4 would score Dice 1 and HD95 0 on
        every case. Values at or above ``num_classes`` are refused per file by
        :func:`~advmim_lightning.data.validation.check_label_values` when read.

        Raises:
            DataValidationError: Naming the file holding the highest value, the value, and the
                ``num_classes`` expected.
        """
        highest, where, count = self._labels_read
        for volume in volumes:
            if volume.label is None or volume.label.size == 0:
                continue
            count += 1
            top = int(volume.label.max())
            if top > highest:
                highest, where = top, volume.source
        self._labels_read = (highest, where, count)
        if count and highest + 1 < self.num_classes:
            first, last = highest + 1, self.num_classes - 1
            absent = f"class {first}" if first == last else f"classes {first} to {last}"
            check_num_classes(
                self.num_classes,
                highest + 1,
                str(self.path),
                f"the labels of the {count} volume(s) read hold class values up to {highest} "
                f"(the highest in {where}), none holds {absent} (it would score Dice 1 and "
                "HD95 0 on every case)",
            )

    def _assemble(
        self, names: list[str], labeled: bool
    ) -> tuple[list[Volume], list[tuple[int, int]]]:
        """Stacks slices into volumes; returns the volumes and the slices in list order."""
        by_volume: dict[str, list[tuple[int, str]]] = {}
        for name in names:
            m = _SLICE_NAME.match(name)
            volume, index = (m.group("volume"), int(m.group("index"))) if m else (name, 0)
            by_volume.setdefault(volume, []).append((index, name))
        volumes: list[Volume] = []
        position: dict[str, tuple[int, int]] = {}
        train_list = str(self.path / "train_slices.list")
        for volume_name, members in by_volume.items():
            members.sort()
            images, labels = [], []
            spacing = affine = None
            for d, (_, name) in enumerate(members):
                path = self._slice_file(name)
                image, label, spacing, affine = read_h5(
                    path, self.num_classes, ndim=2, read_label=labeled, require_label=True
                )
                if images and image.shape != images[0].shape:
                    raise DataValidationError(
                        f"{path}: slice shape {image.shape} differs from {images[0].shape} of the "
                        f"other slices of {volume_name}; expected equal slice shapes per volume."
                    )
                images.append(image)
                labels.append(label)
                position[name] = (len(volumes), d)
            geometry = _geometry(spacing, affine)
            volumes.append(
                Volume(
                    case_id=volume_name,
                    group_id=self.grouper(volume_name, train_list),
                    image=self.normalize(np.stack(images)[None]),
                    label=(
                        np.stack(labels).astype(self.label_dtype, copy=False) if labeled else None
                    ),
                    spacing=geometry[0],
                    spacing_known=geometry[1],
                    affine=geometry[2],
                    slice_axis=0,
                    source=str(self._slice_file(members[0][1])),
                )
            )
        return volumes, [position[n] for n in names]

    def load_eval(self, which: EvalSplit, split: CaseSplit) -> list[Volume]:
        """Reads the volumes of ``val.list`` or ``test.list`` (predict: the test list)."""
        names = self.list_names("val" if which == "val" else "test")
        source = str(self.path / f"{'val' if which == 'val' else 'test'}.list")
        volumes = []
        for name in names:
            path = self.path / "data" / f"{name}.h5"
            image, label, spacing, affine = read_h5(
                path,
                self.num_classes,
                ndim=3,
                read_label=True,
                require_label=which != "predict",
            )
            geometry = _geometry(spacing, affine)
            volumes.append(
                Volume(
                    case_id=name,
                    group_id=self.grouper(name, source),
                    image=self.normalize(image[None]),
                    label=None if label is None else label.astype(self.label_dtype),
                    spacing=geometry[0],
                    spacing_known=geometry[1],
                    affine=geometry[2],
                    slice_axis=0,
                    source=str(path),
                )
            )
        self._check_classes_present(volumes)
        return volumes
