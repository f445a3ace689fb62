"""``AdvMIMDataModule``: paired labeled/unlabeled training batches and whole-volume evaluation."""

from __future__ import annotations

import inspect
import logging
import time
from typing import Literal

from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from advmim_lightning.data.arguments import check_choice, check_int, check_labeled_cases
from advmim_lightning.data.cases import CaseSplit
from advmim_lightning.data.datasets import (
    LABELED_STREAM,
    UNLABELED_STREAM,
    SliceDataset,
    VolumeDataset,
    unwrap_single_item,
)
from advmim_lightning.data.layouts import LAYOUTS, refuse_source_arguments, source_for_layout
from advmim_lightning.data.sampling import EvalShardSampler
from advmim_lightning.data.source import DataSource, EvalSplit, Normalization
from advmim_lightning.data.training import TrainingStream, check_resume_world_size
from advmim_lightning.data.transforms import IMAGE_INTERPOLATIONS, SliceAugmenter
from advmim_lightning.data.validation import (
    DataValidationError,
    check_case_split,
    check_training_pools,
)
from advmim_lightning.run import lightning_private

__all__ = ["LAYOUTS", "AdvMIMDataModule", "check_resume_world_size"]

log = logging.getLogger(__name__)


class AdvMIMDataModule(TrainingStream):
    """Paired labeled + unlabeled 2D training batches and whole-volume evaluation items.

    **Sources.** The volumes come from a :class:`~advmim_lightning.data.source.DataSource`.
    The short form names a built-in one with ``layout`` and configures it with the flat
    arguments below (mapped by :data:`~advmim_lightning.data.layouts.LAYOUT_SOURCES`):
    ``"acdc"`` (:class:`~advmim_lightning.data.acdc.ACDCSource`, the SSL4MIS ACDC layout),
    ``"nifti"`` (:class:`~advmim_lightning.data.nifti.NiftiSource`, an MSD / nnU-Net v2
    folder; several image channels supported end to end) or ``"phantom"``
    (:class:`~advmim_lightning.data.phantom_source.PhantomSource`, a built-in procedural ACDC-like
    dataset). ``source=`` takes any source object instead (in YAML: ``class_path`` and
    ``init_args``); then the layout arguments are refused. ``class_names`` and
    ``in_channels`` come from the source.

    **Cases and splits.** A case is a patient; every split and leakage check works on cases
    (``case_pattern``). ACDC: the first ``labeled_cases`` patients of ``train_slices.list``
    are labeled (3 -> 68 slices, 7 -> 136 on the real list), the other listed patients are the
    unlabeled pool. NIfTI/phantom: a seeded case-level split (``split_seed``) or a split file.
    Labels of unlabeled-pool cases are dropped when loading.

    **Training batches** (``train_dataloader``) are dicts::

        {"labeled": {"image": B_l x C x H x W float32, "label": B_l x H x W int64,
                     "case_id": list[str]},
         "unlabeled": {"image": B_u x C x H x W float32, "case_id": list[str]}}

    ``"unlabeled"`` is absent only with ``require_unlabeled=False`` and an empty unlabeled pool.

    **An epoch** is ``iterations_per_epoch`` iterations (one batch each). By default it is
    enough iterations for the ranks together to see the unlabeled pool once,
    ``ceil(N_unlabeled / (unlabeled_batch_size * world_size))`` (the labeled pool cycles
    meanwhile), or the labeled pool once when there is no unlabeled stream.

    **Sampling** is indexed by iteration: batches depend only on ``(seed, iteration, rank,
    world size)`` (see :class:`~advmim_lightning.data.sampling.IterationSampler`): identical
    with any ``num_workers``, never duplicated across DDP ranks within a pass, and exactly
    reproducible after a resume (see :class:`~advmim_lightning.data.training.TrainingStream`
    for :meth:`data_position`, :meth:`set_start_iteration` and the ``state_dict``). A pool
    smaller than its batch size repeats slices (with a warning).

    **Evaluation items** (val/test/predict loaders, batch size 1, unwrapped): see
    :class:`~advmim_lightning.data.types.EvalItem`: the whole normalised volume
    ``C x D x H x W`` at its original in-plane size with its label, case id, spacing, affine
    and slice axis. The predict set is the test set (labels optional). Under DDP each rank
    evaluates every ``w``-th volume, padded to equal counts.

    **Checks at setup** raise :class:`~advmim_lightning.data.validation.DataValidationError`
    naming the file, the value found and what was expected (files, shapes, geometry, label
    values, NaN/Inf, duplicate or leaking cases, an empty pool unless
    ``require_unlabeled=False``). The NIfTI file listing is checked when the data module is
    built.

    Args:
        root: Dataset root folder (acdc, nifti).
        layout: ``"acdc"``, ``"nifti"`` or ``"phantom"`` (the short form).
        num_classes: Number of classes including background (ACDC and phantom: 4).
        labeled_cases: Number of labeled training cases, or their case ids.
        labeled_batch_size: Labeled slices per batch and rank.
        unlabeled_batch_size: Unlabeled slices per batch and rank.
        image_size: ``(H, W)`` network input size of training slices.
        num_workers: Data-loader worker processes for training.
        seed: Seed of sampling orders and augmentation.
        require_unlabeled: Whether an empty unlabeled pool is an error (False for supervised-
            only methods).
        iterations_per_epoch: Iterations per epoch; None for the default above.
        case_pattern: Regular expression whose first group is the case id of a volume or slice
            name (``re.match``). None: ``r"^(patient\\d+)"`` for ACDC, the whole case name for
            NIfTI and phantom.
        split_file: JSON split file ``{"train": [...], "val": [...], "test": [...],
            "labeled": [...]}`` (every key optional; nifti, phantom); its ``labeled`` key wins
            over ``labeled_cases``.
        split_seed: Seed of the seeded case-level splits (kept apart from ``seed`` so that
            training seeds share one test set).
        val_fraction: Fraction of labeled training cases used for validation (nifti, phantom).
        test_fraction: Fraction of cases used for testing (phantom).
        slice_axis: Axis of the stored NIfTI array to slice along; None for the axis with the
            coarsest spacing (per case).
        normalization: Per-volume intensity normalisation: ``"minmax"`` (ACDC's), ``"zscore"``,
            ``"ct_window"`` or ``"none"``.
        window_level: CT window centre for ``"ct_window"``.
        window_width: CT window width for ``"ct_window"``.
        augment: Whether to augment training slices (resize only when False).
        image_interpolation: Image resize: ``"nearest"`` (as SSL4MIS) or ``"bilinear"``.
        rot_flip_probability: Probability of rot90 + flip.
        rotate_probability: Probability of a rotation in ``[-20, 20)`` degrees when rot90 + flip
            is not applied: 0.5 reproduces SSL4MIS's code (rotation a quarter of the time);
            1.0 rotates whenever rot90 + flip is not applied.
        phantom_cases: Number of phantom cases.
        phantom_slices: Slices per phantom case.
        phantom_size: In-plane size of the phantom.
        phantom_seed: Seed of the phantom's content.
        phantom_heart_scale: The phantom heart's size in pixels relative to the default
            (ACDC-like) proportions, in ``[0.5, 1.6]``; 1.0 is the default phantom.
        cache_dir: Folder for caches: the generated phantom (``.npz``) and decoded NIfTI
            volumes (memory-mapped ``.npy``). None keeps everything in memory.
        pin_memory: Pin training batches; None pins when CUDA is available.
        persistent_workers: Keep training workers alive between epochs.
        eval_num_workers: Worker processes for val/test/predict loaders (volumes are held in
            memory, so 0 is usually fastest).
        source: A data source of your own (a
            :class:`~advmim_lightning.data.source.DataSource`), instead of ``layout``, ``root``
            and the other layout arguments; None: the source of ``layout``.

    Raises:
        ValueError: On arguments out of range (message says what was given and what is
            allowed), or layout arguments given together with ``source``.
        DataValidationError: When the dataset root or its ``dataset.json`` is invalid, or the
            NIfTI files do not match ``dataset.json`` (e.g. a missing ``_0001`` channel file).
    """

    def __init__(
        self,
        root: str | None = None,
        layout: Literal["acdc", "nifti", "phantom"] = "phantom",
        num_classes: int = 4,
        labeled_cases: int | list[str] = 3,
        labeled_batch_size: int = 8,
        unlabeled_batch_size: int = 8,
        image_size: tuple[int, int] = (224, 224),
        num_workers: int = 2,
        seed: int = 0,
        require_unlabeled: bool = True,
        iterations_per_epoch: int | None = None,
        case_pattern: str | None = None,
        split_file: str | None = None,
        split_seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        slice_axis: int | None = None,
        normalization: Normalization = "minmax",
        window_level: float = 40.0,
        window_width: float = 400.0,
        augment: bool = True,
        image_interpolation: Literal["nearest", "bilinear"] = "nearest",
        rot_flip_probability: float = 0.5,
        rotate_probability: float = 0.5,
        phantom_cases: int = 40,
        phantom_slices: int = 8,
        phantom_size: int = 128,
        phantom_seed: int = 0,
        phantom_heart_scale: float = 1.0,
        cache_dir: str | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        eval_num_workers: int = 0,
        source: DataSource | None = None,
    ) -> None:
        flat = dict(locals())
        super().__init__()
        check_choice("layout", layout, LAYOUTS)
        if isinstance(num_classes, bool) or num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background included), got {num_classes}")
        labeled_cases = check_labeled_cases(labeled_cases)
        check_int("labeled_batch_size", labeled_batch_size, 1)
        check_int("unlabeled_batch_size", unlabeled_batch_size, 1)
        image_size = tuple(image_size)  # type: ignore[assignment]
        if len(image_size) != 2 or not all(isinstance(s, int) and s >= 1 for s in image_size):
            raise ValueError(f"image_size must be two integers >= 1, got {image_size!r}")
        for name, value in (("num_workers", num_workers), ("eval_num_workers", eval_num_workers)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if iterations_per_epoch is not None and iterations_per_epoch < 1:
            raise ValueError(
                f"iterations_per_epoch must be >= 1 or None, got {iterations_per_epoch}"
            )
        check_choice("image_interpolation", image_interpolation, IMAGE_INTERPOLATIONS)
        self.augmenter = SliceAugmenter(
            image_size,
            image_interpolation=image_interpolation,
            augment=augment,
            rot_flip_probability=rot_flip_probability,
            rotate_probability=rotate_probability,
        )
        self.source = self._make_source(source, flat)
        self.source.bind(num_classes, labeled_cases)
        if source is None:  # the hyper-parameter keeps the pattern in use (ACDC's default)
            case_pattern = self.source.case_pattern
        self.save_hyperparameters(ignore="source")
        # Plain lists in hparams.yaml (a tuple is written with a Python tag that
        # yaml.safe_load refuses), equal to AdvMIMModule's when Lightning merges both.
        self.hparams["image_size"] = list(image_size)
        lightning_private.set_hparams_initial(self, dict(self.hparams))

        self.root = root
        self.layout = layout if source is None else type(source).__name__
        self.num_classes = num_classes
        self.labeled_cases = labeled_cases
        self.labeled_batch_size = labeled_batch_size
        self.unlabeled_batch_size = unlabeled_batch_size
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.num_workers = num_workers
        self.seed = seed
        self.require_unlabeled = require_unlabeled
        self.iterations_per_epoch = iterations_per_epoch
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.eval_num_workers = eval_num_workers
        self.class_names: list[str] = list(self.source.class_names)
        self.in_channels: int = int(self.source.in_channels)

        self.case_split: CaseSplit | None = None
        self.labeled_dataset: SliceDataset | None = None
        self.unlabeled_dataset: SliceDataset | None = None
        self.val_dataset: VolumeDataset | None = None
        self.test_dataset: VolumeDataset | None = None
        self.predict_dataset: VolumeDataset | None = None

    # --------------------------------------------------------------------------- sources
    @classmethod
    def _make_source(cls, source: DataSource | None, flat: dict) -> DataSource:
        """The layout's source (the short form), or ``source`` when no layout argument clashes.

        Raises:
            TypeError: If ``source`` is not a :class:`DataSource`.
            ValueError: From the source's own checks, or naming the layout arguments given
                together with ``source``.
        """
        if source is None:
            return source_for_layout(flat["layout"], flat)
        if not isinstance(source, DataSource):
            raise TypeError(
                f"source must be a DataSource (advmim_lightning.data.source.DataSource), got "
                f"{type(source).__name__}"
            )
        defaults = inspect.signature(cls.__init__).parameters
        given = {k: v for k, v in flat.items() if k in defaults and v != defaults[k].default}
        refuse_source_arguments(source, given)
        return source

    def prepare_data(self) -> None:
        """Work the source does once per machine on rank 0 (the phantom's cache)."""
        self.source.prepare()

    def resolve_split(self) -> CaseSplit:
        """Resolves (once) and checks the case-level split; cheap, reads no image data."""
        if self.case_split is None:
            split = self.source.case_split()
            check_case_split(split)
            self.case_split = split
        return self.case_split

    # --------------------------------------------------------------------------- setup
    def setup(self, stage: str | None = None) -> None:
        """Loads and checks the data a stage needs (each part once).

        Args:
            stage: ``"fit"`` (training pools + validation), ``"validate"``, ``"test"``,
                ``"predict"``, or None for fit and test.

        Raises:
            DataValidationError: See the class docstring.
        """
        if stage in (None, "fit"):
            self._setup_training()
        if stage in (None, "fit", "validate") and self.val_dataset is None:
            self.val_dataset = self._eval_dataset("val")
            if len(self.val_dataset) == 0:
                rank_zero_warn(
                    f"{self.source.root}: no validation cases "
                    f"({self.source.missing_cases_hint('val')}); validation is skipped."
                )
        if stage in (None, "test") and self.test_dataset is None:
            self.test_dataset = self._eval_dataset("test")
            self._require_cases(self.test_dataset, "test")
        if stage == "predict" and self.predict_dataset is None:
            self.predict_dataset = self._eval_dataset("predict")
            self._require_cases(self.predict_dataset, "predict")

    def _require_cases(self, dataset: VolumeDataset, which: EvalSplit) -> None:
        if len(dataset) == 0:
            raise DataValidationError(
                f"{self.source.root}: the {which} set is empty; expected "
                f"{self.source.missing_cases_hint(which)}."
            )

    def _eval_dataset(self, which: EvalSplit) -> VolumeDataset:
        start = time.perf_counter()
        volumes = self.source.load_eval(which, self.resolve_split())
        log.info(
            "%s: %d %s volume(s) loaded in %.2f s",
            self.layout,
            len(volumes),
            which,
            time.perf_counter() - start,
        )
        return VolumeDataset(volumes)

    def _setup_training(self) -> None:
        if self.labeled_dataset is not None:
            return
        start = time.perf_counter()
        split = self.resolve_split()
        pools = self.source.load_training(split)
        check_training_pools(
            pools,
            split,
            labeled_cases=self.labeled_cases,
            require_unlabeled=self.require_unlabeled,
            batch_sizes=(self.labeled_batch_size, self.unlabeled_batch_size),
        )
        self.labeled_dataset = SliceDataset(
            pools.labeled_volumes,
            pools.labeled_slices,
            self.augmenter,
            labeled=True,
            stream=LABELED_STREAM,
            seed=self.seed,
        )
        self.unlabeled_dataset = None
        if pools.unlabeled_slices:
            self.unlabeled_dataset = SliceDataset(
                pools.unlabeled_volumes,
                pools.unlabeled_slices,
                self.augmenter,
                labeled=False,
                stream=UNLABELED_STREAM,
                seed=self.seed,
            )
        log.info(
            "%s: %d labeled slices (%d cases), %d unlabeled slices (%d cases) in %.2f s",
            self.layout,
            len(pools.labeled_slices),
            len(split.labeled),
            len(pools.unlabeled_slices),
            len(split.unlabeled),
            time.perf_counter() - start,
        )

    # --------------------------------------------------------------------------- evaluation
    def _eval_loader(self, dataset: VolumeDataset | None, stage: str) -> DataLoader:
        if dataset is None:
            self.setup(stage)
            dataset = {"validate": self.val_dataset, "test": self.test_dataset}.get(
                stage, self.predict_dataset
            )
        assert dataset is not None
        rank, world = self._rank_world()
        return DataLoader(
            dataset,
            batch_size=1,
            sampler=EvalShardSampler(dataset, num_replicas=world, rank=rank),
            collate_fn=unwrap_single_item,
            num_workers=self.eval_num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        """Validation volumes, one :class:`~advmim_lightning.data.types.EvalItem` per step."""
        return self._eval_loader(self.val_dataset, "validate")

    def test_dataloader(self) -> DataLoader:
        """Test volumes, one :class:`~advmim_lightning.data.types.EvalItem` per step."""
        return self._eval_loader(self.test_dataset, "test")

    def predict_dataloader(self) -> DataLoader:
        """Prediction volumes (the test set; labels only where they exist)."""
        return self._eval_loader(self.predict_dataset, "predict")
