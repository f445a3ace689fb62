"""``AdvMIMDataModule``: paired labeled/unlabeled training batches and whole-volume evaluation."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import time
from typing import Literal

from lightning.fabric.utilities.data import AttributeDict
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from advmim_lightning.data.arguments import check_choice, check_int, check_labeled_cases
from advmim_lightning.data.cases import CaseSplit, check_case_split
from advmim_lightning.data.datasets import (
    LABELED_STREAM,
    UNLABELED_STREAM,
    SliceDataset,
    VolumeDataset,
    unwrap_single_item,
)
from advmim_lightning.data.layouts import LAYOUTS, refuse_source_arguments, source_for_layout
from advmim_lightning.data.sampling import EvalShardSampler
from advmim_lightning.data.settings import (
    AugmentationSettings,
    LoaderSettings,
    PhantomSettings,
    SecondPhantomSettings,
    SourceSettings,
    as_settings,
    expand_path,
)
from advmim_lightning.data.source import DataSource, EvalSplit, check_training_pools
from advmim_lightning.data.training import TrainingStream, check_resume_world_size
from advmim_lightning.data.transforms import SliceAugmenter
from advmim_lightning.data.unlabeled_source import (
    EVAL_SOURCES,
    UNLABELED_POOLS,
    bind_unlabeled_source,
    merge_pools,
    refuse_labeled_cases_of,
    second_source,
)
from advmim_lightning.data.validation import DataValidationError
from advmim_lightning.run import lightning_private

__all__ = ["LAYOUTS", "AdvMIMDataModule", "check_resume_world_size"]

log = logging.getLogger(__name__)

# The defaults (frozen, so one instance each is safe to share).
_DEFAULT_SETTINGS = SourceSettings()
_DEFAULT_PHANTOM = PhantomSettings()
_DEFAULT_AUGMENTATION = AugmentationSettings()
_DEFAULT_LOADERS = LoaderSettings()


def _plain(value: object) -> object:
    """A settings dataclass as a dictionary of its fields; anything else unchanged."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


class AdvMIMDataModule(TrainingStream):
    """Paired labeled + unlabeled 2D training batches and whole-volume evaluation items.

    **Sources.** The volumes come from a :class:`~advmim_lightning.data.source.DataSource`.
    The short form names a built-in one with ``layout`` and configures it with ``root``,
    ``settings`` and ``phantom`` (:data:`~advmim_lightning.data.layouts.LAYOUT_SOURCES`):
    ``"acdc"`` (:class:`~advmim_lightning.data.acdc.ACDCSource`, the SSL4MIS ACDC layout),
    ``"nifti"`` (:class:`~advmim_lightning.data.nifti.NiftiSource`, an MSD / nnU-Net v2
    folder; several image channels supported end to end) or ``"phantom"``
    (:class:`~advmim_lightning.data.phantom_source.PhantomSource`, a built-in procedural ACDC-like
    dataset). ``source=`` takes any source object instead (in YAML: ``class_path`` and
    ``init_args``); then ``layout``, ``root``, ``settings`` and ``phantom`` are refused.
    ``class_names`` and ``in_channels`` come from the source.

    **Cases and splits.** A case is a patient; every split and leakage check works on cases
    (``settings.case_pattern``). ACDC: the first ``labeled_cases`` patients of ``train_slices.list``
    are labeled (3 -> 68 slices, 7 -> 136 on the real list), the other listed patients are the
    unlabeled pool. NIfTI/phantom: a seeded case-level split (``settings.split_seed``) or a
    split file.
    Labels of unlabeled-pool cases are dropped when loading.

    **Training batches** (``train_dataloader``) are dicts::

        {"labeled": {"image": B_l x C x H x W float32, "label": B_l x H x W int64,
                     "case_id": list[str]},
         "unlabeled": {"image": B_u x C x H x W float32, "case_id": list[str]}}

    ``"unlabeled"`` is absent only with ``require_unlabeled=False`` and an empty unlabeled pool.

    **A second, unlabeled source** (``docs/domain-adaptation.md``): unlabeled images from
    another folder, site or modality, named by ``unlabeled_layout`` (with ``unlabeled_root``,
    ``unlabeled_settings``, ``unlabeled_phantom``) or given as ``unlabeled_source``. The
    labeled pool stays the main source's; the unlabeled pool is the second source's images
    (``unlabeled_pool="second"``) or both sources' (``"both"``). Validation, test and predict
    use the main source's split (``eval_source="main"``) or the second source's labeled split
    (``"second"``). Each source normalises with its own settings; channel and class counts
    must agree (see :mod:`~advmim_lightning.data.unlabeled_source`).

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

    **Configuration** (see ``docs/data.md``, "How data is configured"): the common case is
    ``layout`` and ``root`` (``--data.layout acdc --data.root PATH``). Everything about how
    the source reads its cases lives in one frozen dataclass,
    :class:`~advmim_lightning.data.settings.SourceSettings` (``settings``), which the sources
    take too; the phantom's, the augmentation's and the loaders' options are grouped the same
    way (``--data.settings.normalization zscore``, ``--data.phantom.cases 24``,
    ``--data.augmentation.rotate_probability 1.0``).

    Args:
        root: Dataset root folder (acdc, nifti); ``~`` is expanded.
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
        settings: How the layout's source groups, normalises, splits and caches its cases
            (:class:`~advmim_lightning.data.settings.SourceSettings`: ``case_pattern``,
            ``normalization``, ``window_level``, ``window_width``, ``split_file``,
            ``split_seed``, ``val_fraction``, ``test_fraction``, ``slice_axis``,
            ``cache_dir``).
        phantom: The phantom of ``layout="phantom"``
            (:class:`~advmim_lightning.data.settings.PhantomSettings`: ``cases``, ``slices``,
            ``size``, ``seed``, ``heart_scale``).
        augmentation: Training augmentation
            (:class:`~advmim_lightning.data.settings.AugmentationSettings`: ``enabled``,
            ``image_interpolation``, ``rot_flip_probability``, ``rotate_probability``).
        loaders: Data-loader options (:class:`~advmim_lightning.data.settings.LoaderSettings`:
            ``eval_num_workers``, ``pin_memory``, ``persistent_workers``).
        source: A data source of your own (a
            :class:`~advmim_lightning.data.source.DataSource`), instead of ``layout``,
            ``root``, ``settings`` and ``phantom``; None: the source of ``layout``.
        unlabeled_layout: The second, unlabeled source's layout: ``"acdc"``, ``"nifti"``,
            ``"images"`` (a folder of NIfTI images without labels,
            :class:`~advmim_lightning.data.image_folder.ImageFolderSource`) or ``"phantom"``;
            None: no second source (unless ``unlabeled_source``).
        unlabeled_root: The second source's root (acdc, nifti, images); ``~`` is expanded.
        unlabeled_settings: The second source's own
            :class:`~advmim_lightning.data.settings.SourceSettings` (its normalisation,
            split and cache), independent of ``settings``.
        unlabeled_phantom: The second source's phantom (``unlabeled_layout="phantom"``), as
            changes to the default second phantom, ``phantom`` in the target domain with the
            next phantom seed (:class:`~advmim_lightning.data.settings.SecondPhantomSettings`:
            the fields of ``phantom``, each None to keep the default's; a mapping of them;
            or a whole ``PhantomSettings``); None: that default.
        unlabeled_source: A second source object of your own (in YAML: ``class_path`` and
            ``init_args``), instead of the ``unlabeled_*`` layout arguments.
        unlabeled_pool: With a second source, where the unlabeled pool comes from:
            ``"second"`` (its images only) or ``"both"`` (the main source's unlabeled cases
            too).
        eval_source: Whose split validation, test and predict use: ``"main"`` or
            ``"second"`` (the second source's labeled split, e.g. FLARE's
            ``MRI_imagesVal`` / ``MRI_labelsVal``).

    Raises:
        ValueError: On arguments out of range (message says what was given and what is
            allowed), or layout arguments given together with ``source``.
        TypeError: On a settings argument that is neither its dataclass nor a mapping of its
            fields, or a ``source`` that is not a ``DataSource``.
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
        settings: SourceSettings = _DEFAULT_SETTINGS,
        phantom: PhantomSettings = _DEFAULT_PHANTOM,
        augmentation: AugmentationSettings = _DEFAULT_AUGMENTATION,
        loaders: LoaderSettings = _DEFAULT_LOADERS,
        source: DataSource | None = None,
        unlabeled_layout: Literal["acdc", "nifti", "images", "phantom"] | None = None,
        unlabeled_root: str | None = None,
        unlabeled_settings: SourceSettings = _DEFAULT_SETTINGS,
        unlabeled_phantom: SecondPhantomSettings | None = None,
        unlabeled_source: DataSource | None = None,
        unlabeled_pool: Literal["second", "both"] = "second",
        eval_source: Literal["main", "second"] = "main",
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
        check_int("num_workers", num_workers, 0)
        if iterations_per_epoch is not None and iterations_per_epoch < 1:
            raise ValueError(
                f"iterations_per_epoch must be >= 1 or None, got {iterations_per_epoch}"
            )
        settings = as_settings("settings", settings, SourceSettings)
        phantom = as_settings("phantom", phantom, PhantomSettings)
        check_choice("unlabeled_pool", unlabeled_pool, UNLABELED_POOLS)
        check_choice("eval_source", eval_source, EVAL_SOURCES)
        unlabeled_settings = as_settings("unlabeled_settings", unlabeled_settings, SourceSettings)
        if unlabeled_phantom is not None and not isinstance(unlabeled_phantom, PhantomSettings):
            unlabeled_phantom = as_settings(
                "unlabeled_phantom", unlabeled_phantom, SecondPhantomSettings
            )
        augmentation = as_settings("augmentation", augmentation, AugmentationSettings)
        loaders = as_settings("loaders", loaders, LoaderSettings)
        flat.update(
            settings=settings,
            phantom=phantom,
            unlabeled_settings=unlabeled_settings,
            unlabeled_phantom=unlabeled_phantom,
        )
        root = expand_path(root)
        unlabeled_root = expand_path(unlabeled_root)
        self.augmenter = SliceAugmenter(
            image_size,
            image_interpolation=augmentation.image_interpolation,
            augment=augmentation.enabled,
            rot_flip_probability=augmentation.rot_flip_probability,
            rotate_probability=augmentation.rotate_probability,
        )
        self.source = self._make_source(source, flat, root)
        self.source.bind(num_classes, labeled_cases)
        self.unlabeled_source = second_source(
            unlabeled_source,
            unlabeled_layout,
            unlabeled_root,
            unlabeled_settings,
            unlabeled_phantom,
            main_phantom=phantom,
        )
        if self.unlabeled_source is not None:
            bind_unlabeled_source(self.unlabeled_source, self.source, num_classes)
        elif (unlabeled_pool, eval_source) != ("second", "main"):
            raise ValueError(
                f"unlabeled_pool={unlabeled_pool!r} and eval_source={eval_source!r} choose "
                "between two sources, but no second source was given; expected "
                "unlabeled_layout (with unlabeled_root) or unlabeled_source."
            )
        if source is None:  # the hyper-parameter keeps the settings in use (ACDC's pattern)
            settings = self.source.settings
        self.save_hyperparameters(ignore=["source", "unlabeled_source"])
        for key, value in list(self.hparams.items()):  # plain values: weights_only loading
            self.hparams[key] = _plain(value)
        # Plain lists in hparams.yaml (a tuple is written with a Python tag that
        # yaml.safe_load refuses), equal to AdvMIMModule's when Lightning merges both.
        self.hparams["image_size"] = list(image_size)
        lightning_private.set_hparams_initial(self, dict(self.hparams))

        self.root = root
        self.cache_dir = getattr(self.source, "settings", settings).cache_dir
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
        self.pin_memory = loaders.pin_memory
        self.persistent_workers = loaders.persistent_workers
        self.eval_num_workers = loaders.eval_num_workers
        self.class_names: list[str] = list(self.source.class_names)
        self.in_channels: int = int(self.source.in_channels)
        self.unlabeled_pool = unlabeled_pool
        self.eval_source = eval_source

        self.case_split: CaseSplit | None = None
        self.unlabeled_split: CaseSplit | None = None
        self.labeled_dataset: SliceDataset | None = None
        self.unlabeled_dataset: SliceDataset | None = None
        self.val_dataset: VolumeDataset | None = None
        self.test_dataset: VolumeDataset | None = None
        self.predict_dataset: VolumeDataset | None = None

    @property
    def hparams_initial(self) -> AttributeDict:
        """The initial hyper-parameters (what loggers record), the settings as dictionaries."""
        return AttributeDict({k: _plain(v) for k, v in super().hparams_initial.items()})

    # --------------------------------------------------------------------------- sources
    @classmethod
    def _make_source(cls, source: DataSource | None, flat: dict, root: str | None) -> DataSource:
        """The layout's source (the short form), or ``source`` when no layout argument clashes.

        Raises:
            TypeError: If ``source`` is not a :class:`DataSource`.
            ValueError: From the source's own checks, or naming the layout arguments given
                together with ``source``.
        """
        if source is None:
            return source_for_layout(flat["layout"], root, flat["settings"], flat["phantom"])
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
        """Work the sources do once per machine on rank 0 (the phantom's cache)."""
        self.source.prepare()
        if self.unlabeled_source is not None:
            self.unlabeled_source.prepare()

    def resolve_split(self) -> CaseSplit:
        """Resolves (once) and checks the case-level split; cheap, reads no image data.

        Raises:
            DataValidationError: From the source, or when ``labeled_cases`` names cases of
                the second (unlabeled) source.
        """
        if self.case_split is None:
            second = self.resolve_unlabeled_split()
            try:
                split = self.source.case_split()
            except DataValidationError:
                if second is not None and self.unlabeled_source is not None:
                    refuse_labeled_cases_of(self.unlabeled_source, second, self.labeled_cases)
                raise
            check_case_split(split)
            self.case_split = split
        return self.case_split

    def resolve_unlabeled_split(self) -> CaseSplit | None:
        """The second source's case split (all its training cases unlabeled), or None."""
        if self.unlabeled_source is not None and self.unlabeled_split is None:
            self.unlabeled_split = self.unlabeled_source.case_split()
        return self.unlabeled_split

    @property
    def eval_layout(self) -> str:
        """The layout of the source that validation, test and predict read (``eval_source``):
        the prediction writer's ``"auto"`` format follows it."""
        if self.eval_source == "second" and self.unlabeled_source is not None:
            second = self.unlabeled_source
            return str(getattr(second, "layout", type(second).__name__))
        return self.layout

    def _eval_source_and_split(self) -> tuple[DataSource, CaseSplit]:
        """The source and split that validation, test and predict use (``eval_source``)."""
        if self.eval_source == "second":
            assert self.unlabeled_source is not None
            split = self.resolve_unlabeled_split()
            assert split is not None
            return self.unlabeled_source, split
        return self.source, self.resolve_split()

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
                source = self._eval_source_and_split()[0]
                rank_zero_warn(
                    f"{source.root}: no validation cases "
                    f"({source.missing_cases_hint('val')}); validation is skipped."
                )
        if stage in (None, "test") and self.test_dataset is None:
            self.test_dataset = self._eval_dataset("test")
            self._require_cases(self.test_dataset, "test")
        if stage == "predict" and self.predict_dataset is None:
            self.predict_dataset = self._eval_dataset("predict")
            self._require_cases(self.predict_dataset, "predict")

    def _require_cases(self, dataset: VolumeDataset, which: EvalSplit) -> None:
        if len(dataset) == 0:
            source = self._eval_source_and_split()[0]
            asked = " (eval_source='second')" if self.eval_source == "second" else ""
            raise DataValidationError(
                f"{source.root}: the {which} set is empty{asked}; expected "
                f"{source.missing_cases_hint(which)}."
            )

    def _eval_dataset(self, which: EvalSplit) -> VolumeDataset:
        start = time.perf_counter()
        source, split = self._eval_source_and_split()
        volumes = source.load_eval(which, split)
        log.info(
            "%s: %d %s volume(s) loaded in %.2f s",
            self.layout if source is self.source else f"unlabeled source {source.root}",
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
        second = self.resolve_unlabeled_split()
        if second is None or self.unlabeled_source is None:
            pools = self.source.load_training(split)
        else:  # the main source's unlabeled cases are read only when they join the pool
            both = self.unlabeled_pool == "both"
            own = split if both else dataclasses.replace(split, unlabeled=[])
            pools = merge_pools(
                self.source.load_training(own),
                self.unlabeled_source.load_training(second),
                self.unlabeled_pool,
                self.unlabeled_source,
            )
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
            "%s: %d labeled slices (%d cases), %d unlabeled slices (%d volumes) in %.2f s",
            self.layout,
            len(pools.labeled_slices),
            len(split.labeled),
            len(pools.unlabeled_slices),
            len(pools.unlabeled_volumes),
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
