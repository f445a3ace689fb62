"""A folder of NIfTI images without labels, with an optional labeled evaluation folder.

The unlabeled source of a domain-adaptation setting (``unlabeled_layout="images"``): the
images of another site, scanner or modality, and, where there is one, a labeled set of that
domain to evaluate on. FLARE25 Task 3's MRI folder, for example::

    MRI/
      Training/MRI_image/<case>_0000.nii.gz         # unlabeled training images
      PublicValidation/MRI_imagesVal/<case>_0000.nii.gz
      PublicValidation/MRI_labelsVal/<case>.nii.gz  # labels of the evaluation images

is ``ImageFolderSource("MRI", images="Training/MRI_image",
eval_images="PublicValidation/MRI_imagesVal", eval_labels="PublicValidation/MRI_labelsVal")``.
File names follow nnU-Net: ``<case>_0000.nii.gz`` .. ``<case>_{C-1}.nii.gz`` for ``C``
channels (a single channel may drop the suffix), labels ``<case>.nii.gz``. There is no
``dataset.json``: the channel count is read from the file names, and the class count is the
data module's (labels are checked against it).

Every image of ``images`` is unlabeled training data. The evaluation cases are split into
validation (a seeded ``val_fraction`` of them, ``split_seed``) and test (the rest).
"""

from __future__ import annotations

from pathlib import Path

from advmim_lightning.data.cases import CaseSplit, fraction_count, seeded_order
from advmim_lightning.data.nifti import NiftiSource
from advmim_lightning.data.settings import SourceSettings
from advmim_lightning.data.source import EvalSplit, TrainingPools, pools_from_volumes
from advmim_lightning.data.types import Volume
from advmim_lightning.data.validation import DataValidationError

__all__ = ["ImageFolderSource"]

_ENDINGS = (".nii.gz", ".nii")


class ImageFolderSource(NiftiSource):
    """Unlabeled NIfTI images, and optionally a labeled evaluation set (module docstring).

    Args:
        root: The folder (``~`` is expanded).
        images: The training images' folder, relative to ``root`` (``"."``: ``root`` itself).
        eval_images: The evaluation images' folder, relative to ``root``; None: no
            evaluation split (the data module then evaluates on its main source).
        eval_labels: The evaluation labels' folder, relative to ``root``; required with
            ``eval_images``.
        settings: The shared :class:`~advmim_lightning.data.settings.SourceSettings`
            (normalisation, ``slice_axis``, ``cache_dir``, ``split_seed``,
            ``val_fraction`` of the evaluation cases, ``case_pattern``).

    Raises:
        ValueError: On an empty ``root``, or ``eval_images`` without ``eval_labels``.
        DataValidationError: At :meth:`open`, when a folder is missing, ``images`` holds no
            NIfTI image, or the channel files do not match.
    """

    layout = "images"

    def __init__(
        self,
        root: str,
        images: str = ".",
        eval_images: str | None = None,
        eval_labels: str | None = None,
        settings: SourceSettings | None = None,
    ) -> None:
        super().__init__(root, settings)
        if (eval_images is None) != (eval_labels is None):
            raise ValueError(
                f"eval_images and eval_labels go together, got eval_images={eval_images!r} "
                f"and eval_labels={eval_labels!r}"
            )
        self.images, self.eval_images, self.eval_labels = images, eval_images, eval_labels

    def open(self) -> None:
        """Finds the folders, the file ending and the channel count; checks the listing."""
        self.path = self._open_root(self.root, "image folder", f"{self.images}/ with NIfTI images")
        folder = self.path / self.images
        if not folder.is_dir():
            raise DataValidationError(
                f"{folder}: not a folder; expected the unlabeled images (images={self.images!r})."
            )
        names = [f.name for f in sorted(folder.iterdir()) if not f.name.startswith(".")]
        found = [n for n in names if n.endswith(_ENDINGS)]
        if not found:
            raise DataValidationError(
                f"{folder}: found no NIfTI images (0 of {len(names)} file(s) end in .nii.gz or "
                ".nii); expected <case>_0000.nii.gz files."
            )
        self.file_ending = ".nii.gz" if found[0].endswith(".nii.gz") else ".nii"
        stems = [n[: -len(self.file_ending)] for n in found if n.endswith(self.file_ending)]
        channels = {int(s[-4:]) for s in stems if len(s) > 5 and s[-5] == "_" and s[-4:].isdigit()}
        self.in_channels = max(channels) + 1 if channels else 1
        self.channel_names = [f"channel{c}" for c in range(self.in_channels)]
        self.class_names = ["background", *(f"class{c}" for c in range(1, self.num_classes))]
        if self.eval_images is not None:
            for sub in (self.eval_images, self.eval_labels):
                if not (self.path / str(sub)).is_dir():
                    raise DataValidationError(
                        f"{self.path / str(sub)}: not a folder; expected the evaluation images "
                        "and labels (eval_images, eval_labels)."
                    )
        self.cases()

    def cases(self) -> dict:
        """``{"train": {case: (channel files, None)}, "test": {case: (files, label)}}``."""
        if self._scan is None:
            train = self._scan_folder(self.images, None)
            test = {}
            if self.eval_images is not None:
                test = self._scan_folder(self.eval_images, self.eval_labels)
            both = sorted(set(train) & set(test))
            if both:
                raise DataValidationError(
                    f"{self.path}: case id(s) {both[:10]} in both {self.images} and "
                    f"{self.eval_images}; expected each case once."
                )
            self._scan = {"train": train, "test": test}
        return self._scan

    def missing_cases_hint(self, which: EvalSplit) -> str:
        if self.eval_images is None:
            return "an evaluation folder (eval_images, eval_labels)"
        if which == "val":
            return f"val_fraction={self.settings.val_fraction} of the evaluation cases"
        return f"images in {self.path / self.eval_images} beyond the validation cases"

    def case_split(self) -> CaseSplit:
        """Every training image unlabeled; the evaluation cases split into val and test."""
        scan = self.cases()
        train = list(self._groups(scan["train"], self.images))
        evaluation = seeded_order(
            list(self._groups(scan["test"], str(self.eval_images))), self.settings.split_seed
        )
        count = fraction_count(self.settings.val_fraction, len(evaluation))
        return CaseSplit(
            labeled=[],
            unlabeled=train,
            val=sorted(evaluation[:count]),
            test=sorted(evaluation[count:]),
            source=str(self.path),
        )

    def load_training(self, split: CaseSplit) -> TrainingPools:
        """Reads every training image (never a label)."""
        volumes = [
            self.load_case(case, files, None, read_label=False)
            for case, files, _ in self._cases_of(split.unlabeled)
        ]
        return pools_from_volumes(volumes, split)

    def load_eval(self, which: EvalSplit, split: CaseSplit) -> list[Volume]:
        """Reads the val or test cases with their labels (optional for predict)."""
        volumes = []
        for case, files, label_file in self._cases_of(split.val if which == "val" else split.test):
            if label_file is None and which != "predict":
                expected = Path(self.path / str(self.eval_labels)) / f"{case}{self.file_ending}"
                raise DataValidationError(
                    f"Missing label file {expected} for {which} case {case!r}; expected labels "
                    f"for every {which} case."
                )
            volumes.append(self.load_case(case, files, label_file, read_label=True))
        return volumes
