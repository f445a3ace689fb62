"""``AdvMIMDataModule``: paired labeled/unlabeled training batches and whole-volume evaluation."""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from advmim_lightning.data.acdc import ACDCSource
from advmim_lightning.data.cases import DEFAULT_ACDC_CASE_PATTERN, CaseGrouper, CaseSplit
from advmim_lightning.data.datasets import (
    ITERATION_KEY,
    LABELED_STREAM,
    UNLABELED_STREAM,
    PairedTrainingDataset,
    SliceDataset,
    VolumeDataset,
    collate_training_batch,
    unwrap_single_item,
)
from advmim_lightning.data.nifti import NiftiSource
from advmim_lightning.data.phantom import PhantomSource, generate_phantom
from advmim_lightning.data.sampling import EvalShardSampler, IterationSampler, StreamSpec
from advmim_lightning.data.source import DataSource, LoadOptions
from advmim_lightning.data.transforms import IMAGE_INTERPOLATIONS, NORMALIZATIONS, SliceAugmenter
from advmim_lightning.data.validation import DataValidationError, check_disjoint

__all__ = ["LAYOUTS", "AdvMIMDataModule", "check_resume_world_size"]

log = logging.getLogger(__name__)

LAYOUTS = ("acdc", "nifti", "phantom")
_STATE_VERSION = 1


def check_resume_world_size(saved: int | None, current: int) -> None:
    """Refuses to resume training with another number of processes than the saved run's.

    Iteration ``it`` of rank ``r`` reads global sample positions ``(it * w + r) * B + j``, so
    the positions a run has consumed depend on its world size ``w``: continuing a run saved
    with ``w`` processes with another count would read some samples a second time (fewer
    processes) or never read others (more processes).

    Args:
        saved: World size stored in the checkpoint (None for checkpoints that lack it).
        current: World size of this run (``num_nodes x devices``).

    Raises:
        ValueError: If ``saved`` is known and differs from ``current``.
    """
    if saved is None or int(saved) == current:
        return
    raise ValueError(
        f"the checkpoint was saved by a run with {saved} process(es) and this run has {current} "
        f"(world size = trainer.num_nodes x trainer.devices): batches are keyed by iteration, "
        f"rank and world size, so resuming would repeat or skip training samples; resume with "
        f"{saved} processes (e.g. --trainer.num_nodes 1 --trainer.devices {saved}), or start a "
        "new run without --ckpt_path."
    )


class _TrainingLoader(DataLoader):
    """The training DataLoader, resumable for Lightning (it has ``state_dict``).

    Its state is the data module's next iteration; Lightning stores it in checkpoints and loads
    it before creating the first iterator of a resumed run, which tells Lightning that resuming
    mid-epoch is exact. Inside a Trainer every iterator starts at
    :meth:`AdvMIMDataModule.data_position` (the trained module's iteration count when it keeps
    one), whatever epoch Lightning counts.
    """

    def __init__(self, *args: Any, datamodule: AdvMIMDataModule, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._datamodule = datamodule

    def __iter__(self) -> Any:
        sampler = self.sampler
        # Lightning may have replaced the sampler (overfit_batches): then items are indices.
        # Outside a Trainer the sampler's own set_epoch / start_iteration decide.
        if isinstance(sampler, IterationSampler) and self._datamodule.trainer is not None:
            position = self._datamodule.data_position()
            sampler.set_start_iteration(position)
            sampler.set_epoch(position // sampler.iterations_per_epoch)
        return super().__iter__()

    def state_dict(self) -> dict[str, int]:
        return {"next_iteration": self._datamodule.next_iteration}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if "next_iteration" in state_dict:
            self._datamodule.set_start_iteration(int(state_dict["next_iteration"]))


class AdvMIMDataModule(pl.LightningDataModule):
    """Paired labeled + unlabeled 2D training batches and whole-volume evaluation items.

    **Layouts.** ``"acdc"``: the SSL4MIS ACDC layout (``train_slices.list``, ``val.list``,
    ``test.list``, ``data/slices/*.h5``, ``data/*.h5``). ``"nifti"``: an MSD / nnU-Net v2 folder
    (``dataset.json``, ``imagesTr``, ``labelsTr``, optional ``imagesTs``/``labelsTs``); several
    image channels are supported end to end (``in_channels`` follows ``channel_names``).
    ``"phantom"``: a built-in procedural ACDC-like dataset (no files needed).

    **Cases and splits.** A case is a patient; names are grouped into cases by ``case_pattern``
    and every split and leakage check works on cases. ACDC: ``labeled_cases=n`` takes the slices
    of the first ``n`` patients in ``train_slices.list`` order (3 -> 68 slices, 7 -> 136 on the
    real list); the other listed patients are the unlabeled pool. NIfTI/phantom: a seeded
    case-level split (``split_seed``) or a split file; NIfTI validation is a seeded
    ``val_fraction`` of the labeled training cases and ``imagesTs`` the test set; phantom test
    and validation are seeded fractions. Labels of unlabeled-pool cases are dropped when loading.

    **Training batches** (``train_dataloader``) are dicts::

        {"labeled": {"image": B_l x C x H x W float32, "label": B_l x H x W int64,
                     "case_id": list[str]},
         "unlabeled": {"image": B_u x C x H x W float32, "case_id": list[str]}}

    ``"unlabeled"`` is absent only with ``require_unlabeled=False`` and an empty unlabeled pool.

    **An epoch** is ``iterations_per_epoch`` iterations (one batch each). By default it is
    enough iterations for the ranks together to see the unlabeled pool once,
    ``ceil(N_unlabeled / (unlabeled_batch_size * world_size))`` (the labeled pool, which is
    usually smaller, cycles meanwhile), or the labeled pool once when there is no unlabeled
    stream. Set ``Trainer(max_steps=...)`` or ``max_epochs`` to bound training by iterations.

    **Sampling** is indexed by iteration: iteration ``it`` on rank ``r`` of ``w`` reads global
    sample positions ``(it * w + r) * B + j`` of each stream; position ``g`` reads item
    ``perm[g % N]`` of a permutation seeded by ``(seed, stream, g // N)``. Augmentation is keyed
    by ``(seed, stream, g)``. Batches therefore depend only on ``(seed, iteration, rank, world
    size)``: identical with any ``num_workers``, never duplicated across DDP ranks within a pass,
    and exactly reproducible after a resume. A pool smaller than its batch size repeats slices
    (with a warning). Resuming: every training iterator starts at :meth:`data_position`,
    the trained LightningModule's ``iteration`` count when it keeps one (``AdvMIMModule``
    does, and restores it from checkpoints), so any checkpoint resumes exactly. For other
    LightningModules the data module's ``state_dict`` stores the next iteration (saved in
    Lightning checkpoints and restored with ``ckpt_path``), and :meth:`set_start_iteration`
    before the epoch starts sets it. Lightning's ``overfit_batches`` replaces the sampler: the
    training set then reads integer index ``i`` as iteration ``i``. The data module overrides
    ``on_before_batch_transfer`` to read (and remove) the ``"iteration"`` entry of each
    training batch; batches read from the loader outside a Trainer still carry it.

    **Evaluation items** (val/test/predict loaders, batch size 1, unwrapped): see
    :class:`~advmim_lightning.data.types.EvalItem`: the whole normalised volume
    ``C x D x H x W`` at its original in-plane size, ``label`` ``D x H x W`` int64 (absent when
    there is none), ``case_id``, ``case_index``, ``spacing`` (``D, H, W``, mm),
    ``spacing_known``, ``affine`` (of the original array), ``slice_axis`` (write a prediction
    back with ``np.moveaxis(pred, 0, slice_axis)``) and ``source``. The predict set is the
    test set (NIfTI: ``imagesTs``, labels optional). Under DDP each rank evaluates every
    ``w``-th volume, padded to equal counts (metrics keep one score per case index).

    **Checks at setup** raise :class:`~advmim_lightning.data.validation.DataValidationError`
    naming the file, the value found and what was expected: missing/unreadable files,
    image/label (or channel) shape, spacing, origin or direction mismatch, labels outside
    ``[0, num_classes)``, NaN/Inf voxels, duplicate case ids, a labeled case that is also in
    val/test, an ACDC patient in two lists, an empty unlabeled pool (unless
    ``require_unlabeled=False``). The NIfTI file listing (names, channel files declared by
    ``dataset.json``) is checked when the data module is built.

    Args:
        root: Dataset root folder (unused for the phantom).
        layout: ``"acdc"``, ``"nifti"`` or ``"phantom"``.
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
            "labeled": [...]}`` (every key optional) for the NIfTI and phantom layouts; its
            ``labeled`` key wins over ``labeled_cases``.
        split_seed: Seed of the seeded case-level splits (kept apart from ``seed`` so that
            training seeds share one test set).
        val_fraction: Fraction of labeled training cases used for validation (NIfTI, phantom).
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
        cache_dir: Folder for caches: the generated phantom (``.npz``) and decoded NIfTI
            volumes (memory-mapped ``.npy``). None keeps everything in memory.
        pin_memory: Pin training batches; None pins when CUDA is available.
        persistent_workers: Keep training workers alive between epochs.
        eval_num_workers: Worker processes for val/test/predict loaders (volumes are held in
            memory, so 0 is usually fastest).

    Raises:
        ValueError: On arguments out of range (message says what was given and what is
            allowed).
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
        normalization: Literal["minmax", "zscore", "ct_window", "none"] = "minmax",
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
        cache_dir: str | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        eval_num_workers: int = 0,
    ) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if layout != "phantom" and not root:
            raise ValueError(f"root is required for layout={layout!r}, got {root!r}")
        if isinstance(num_classes, bool) or num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background included), got {num_classes}")
        if isinstance(labeled_cases, bool) or (
            isinstance(labeled_cases, int) and labeled_cases < 1
        ):
            raise ValueError(
                f"labeled_cases must be >= 1 or a list of case ids, got {labeled_cases!r}"
            )
        if not isinstance(labeled_cases, int):
            labeled_cases = list(labeled_cases)
            if not labeled_cases or not all(isinstance(c, str) and c for c in labeled_cases):
                raise ValueError(
                    "labeled_cases must be a non-empty list of case id strings, got "
                    f"{labeled_cases!r}"
                )
            if len(set(labeled_cases)) != len(labeled_cases):
                raise ValueError(f"labeled_cases lists a case twice: {labeled_cases!r}")
        for name, value in (
            ("labeled_batch_size", labeled_batch_size),
            ("unlabeled_batch_size", unlabeled_batch_size),
            ("phantom_cases", phantom_cases),
            ("phantom_slices", phantom_slices),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
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
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if slice_axis is not None and slice_axis not in (0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1, 2 or None, got {slice_axis!r}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}"
            )
        if window_width <= 0:
            raise ValueError(f"window_width must be > 0, got {window_width}")
        if image_interpolation not in IMAGE_INTERPOLATIONS:
            raise ValueError(
                f"image_interpolation must be one of {IMAGE_INTERPOLATIONS}, got "
                f"{image_interpolation!r}"
            )
        if phantom_size < 16:
            raise ValueError(f"phantom_size must be >= 16, got {phantom_size}")
        if split_file is not None and layout == "acdc":
            raise ValueError(
                "split_file is not used by the acdc layout (its lists define the split); "
                f"got split_file={split_file!r}"
            )
        if case_pattern is None and layout == "acdc":
            case_pattern = DEFAULT_ACDC_CASE_PATTERN
        CaseGrouper(case_pattern)  # raises ValueError on an invalid pattern
        self.augmenter = SliceAugmenter(
            image_size,
            image_interpolation=image_interpolation,
            augment=augment,
            rot_flip_probability=rot_flip_probability,
            rotate_probability=rotate_probability,
        )
        self.save_hyperparameters()

        self.root = root
        self.layout = layout
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
        self.options = LoadOptions(
            num_classes=num_classes,
            labeled_cases=labeled_cases if isinstance(labeled_cases, int) else tuple(labeled_cases),
            case_pattern=case_pattern,
            split_file=split_file,
            split_seed=split_seed,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            slice_axis=slice_axis,
            normalization=normalization,
            window_level=window_level,
            window_width=window_width,
            cache_dir=cache_dir,
        )
        self._phantom_args = (phantom_cases, phantom_slices, phantom_size, phantom_seed)
        self.source: DataSource = self._make_source()
        self.class_names: list[str] = list(self.source.class_names)
        self.in_channels: int = int(self.source.in_channels)

        self.case_split: CaseSplit | None = None
        self.labeled_dataset: SliceDataset | None = None
        self.unlabeled_dataset: SliceDataset | None = None
        self.val_dataset: VolumeDataset | None = None
        self.test_dataset: VolumeDataset | None = None
        self.predict_dataset: VolumeDataset | None = None
        self._start_iteration = 0
        self._last_trained_iteration: int | None = None
        self._train_sampler: IterationSampler | None = None

    # --------------------------------------------------------------------------- sources
    def _make_source(self) -> DataSource:
        if self.layout == "acdc":
            return ACDCSource(str(self.root), self.options)
        if self.layout == "nifti":
            return NiftiSource(str(self.root), self.options)
        cases, slices, size, seed = self._phantom_args
        return PhantomSource(self.options, cases, slices, size, seed)

    def prepare_data(self) -> None:
        """Writes the phantom cache once (rank 0) when ``cache_dir`` is set."""
        if self.layout == "phantom" and self.options.cache_dir is not None:
            generate_phantom(*self._phantom_args, cache_dir=self.options.cache_dir)

    def resolve_split(self) -> CaseSplit:
        """Resolves (once) and checks the case-level split; cheap, reads no image data."""
        if self.case_split is None:
            split = self.source.case_split()
            check_disjoint(split.labeled, split.val, "val", split.source)
            check_disjoint(split.labeled, split.test, "test", split.source)
            for name, other in (("val", split.val), ("test", split.test)):
                overlap = sorted(set(split.unlabeled) & set(other))
                if overlap:
                    rank_zero_warn(
                        f"{split.source}: unlabeled training case(s) {overlap[:10]} are also in "
                        f"the {name} split; their images (not labels) are used for training."
                    )
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
                    f"{self.source.root}: no validation cases (val_fraction="
                    f"{self.options.val_fraction}); validation is skipped."
                )
        if stage in (None, "test") and self.test_dataset is None:
            self.test_dataset = self._eval_dataset("test")
            self._require_cases(self.test_dataset, "test")
        if stage == "predict" and self.predict_dataset is None:
            self.predict_dataset = self._eval_dataset("predict")
            self._require_cases(self.predict_dataset, "predict")

    def _require_cases(self, dataset: VolumeDataset, which: str) -> None:
        if len(dataset) == 0:
            hint = {
                "nifti": "imagesTs/ images (with labelsTs/ for testing) or a 'test' list in the "
                "split file",
                "acdc": "names in test.list",
                "phantom": "test_fraction > 0 or a 'test' list in the split file",
            }[self.layout]
            raise DataValidationError(
                f"{self.source.root}: the {which} set is empty; expected {hint}."
            )

    def _eval_dataset(self, which: Literal["val", "test", "predict"]) -> VolumeDataset:
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
        where = split.source
        if not pools.labeled_slices:
            raise DataValidationError(
                f"{where}: the labeled pool is empty (labeled cases {split.labeled[:10]}); "
                "expected at least one labeled slice."
            )
        if not pools.unlabeled_slices and self.require_unlabeled:
            raise DataValidationError(
                f"{where}: the unlabeled pool is empty: all {len(split.labeled)} training "
                f"case(s) are labeled (labeled_cases={self.labeled_cases!r}); expected at least "
                "one unlabeled case for a semi-supervised method (for supervised-only "
                "training: --model.method supervised on the command line, or "
                "require_unlabeled=False)."
            )
        for name, count, batch in (
            ("labeled", len(pools.labeled_slices), self.labeled_batch_size),
            ("unlabeled", len(pools.unlabeled_slices), self.unlabeled_batch_size),
        ):
            if 0 < count < batch:
                rank_zero_warn(
                    f"{where}: the {name} pool has {count} slice(s), fewer than "
                    f"{name}_batch_size={batch}; batches repeat slices (the sampler cycles "
                    "through the pool)."
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

    # --------------------------------------------------------------------------- training
    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def resolved_iterations_per_epoch(self, world_size: int = 1) -> int:
        """Iterations per epoch for ``world_size`` ranks (see the class docstring).

        Raises:
            RuntimeError: Before ``setup("fit")`` when ``iterations_per_epoch`` is None.
        """
        if self.iterations_per_epoch is not None:
            return self.iterations_per_epoch
        if self.labeled_dataset is None:
            raise RuntimeError("call setup('fit') before asking for the default epoch length")
        if self.unlabeled_dataset is not None:
            return math.ceil(len(self.unlabeled_dataset) / (self.unlabeled_batch_size * world_size))
        return math.ceil(len(self.labeled_dataset) / (self.labeled_batch_size * world_size))

    def train_dataloader(self) -> DataLoader:
        """The training loader: one paired batch per iteration (see the class docstring)."""
        self._setup_training()
        assert self.labeled_dataset is not None
        rank, world = self._rank_world()
        streams = [
            StreamSpec(
                "labeled", LABELED_STREAM, len(self.labeled_dataset), self.labeled_batch_size
            )
        ]
        if self.unlabeled_dataset is not None:
            streams.append(
                StreamSpec(
                    "unlabeled",
                    UNLABELED_STREAM,
                    len(self.unlabeled_dataset),
                    self.unlabeled_batch_size,
                )
            )
        dataset = PairedTrainingDataset(self.labeled_dataset, self.unlabeled_dataset)
        sampler = IterationSampler(
            dataset,
            streams,
            iterations_per_epoch=self.resolved_iterations_per_epoch(world),
            seed=self.seed,
            num_replicas=world,
            rank=rank,
            start_iteration=self._start_iteration,
        )
        dataset.planner = sampler.plan  # integer indices: Lightning's overfit_batches sampler
        # Lightning calls set_epoch() only after creating the first iterator of a (resumed) run.
        sampler.set_epoch(int(self.trainer.current_epoch) if self.trainer is not None else 0)
        self._train_sampler = sampler
        pin = torch.cuda.is_available() if self.pin_memory is None else self.pin_memory
        return _TrainingLoader(
            dataset,
            datamodule=self,
            batch_size=None,
            sampler=sampler,
            collate_fn=collate_training_batch,
            num_workers=self.num_workers,
            pin_memory=pin,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
        )

    @property
    def start_iteration(self) -> int:
        """Global iteration the next training iterator starts from (for resuming)."""
        return self._start_iteration

    @start_iteration.setter
    def start_iteration(self, iteration: int) -> None:
        if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
            raise ValueError(f"start_iteration must be an integer >= 0, got {iteration!r}")
        self._start_iteration = iteration
        self._last_trained_iteration = None
        if self._train_sampler is not None:
            self._train_sampler.set_start_iteration(iteration)

    def set_start_iteration(self, iteration: int) -> None:
        """Makes the next training iterator start at global ``iteration`` (same as the setter)."""
        self.start_iteration = iteration

    def data_position(self) -> int:
        """Global iteration the next training iterator starts from.

        Inside a Trainer whose LightningModule counts its completed iterations in an integer
        ``iteration`` attribute (:class:`~advmim_lightning.AdvMIMModule` does, and restores it
        from checkpoints), that count alone: the batches then follow the model's progress
        however the checkpoint was made (``ModelCheckpoint`` mid-epoch,
        ``trainer.save_checkpoint`` after ``fit`` returned, an extended ``max_iterations``),
        and Lightning's epoch counter, which a checkpoint saved after ``fit`` restores one
        ahead, plays no part. Otherwise :attr:`next_iteration`.
        """
        module = getattr(self.trainer, "lightning_module", None) if self.trainer else None
        iteration = getattr(module, "iteration", None)
        if isinstance(iteration, int) and not isinstance(iteration, bool) and iteration >= 0:
            return iteration
        return self.next_iteration

    @property
    def next_iteration(self) -> int:
        """Global iteration of the next training batch: one past the last batch handed to the
        LightningModule in this run, or ``start_iteration`` before any."""
        if self._last_trained_iteration is None:
            return self._start_iteration
        return self._last_trained_iteration + 1

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Records (and removes) the iteration index of training batches."""
        if isinstance(batch, dict) and ITERATION_KEY in batch and "labeled" in batch:
            self._last_trained_iteration = int(batch.pop(ITERATION_KEY))
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Resume state (plain Python values, loadable with ``weights_only=True``)."""
        world = self._rank_world()[1]
        sampler = self._train_sampler
        return {
            "version": _STATE_VERSION,
            "next_iteration": self.next_iteration,
            "seed": self.seed,
            "labeled_batch_size": self.labeled_batch_size,
            "unlabeled_batch_size": self.unlabeled_batch_size,
            "world_size": world,
            "iterations_per_epoch": sampler.iterations_per_epoch if sampler is not None else None,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores the next iteration; warns when settings that change the batches differ.

        Raises:
            ValueError: When resuming training with another number of processes than the
                checkpoint's run (see :func:`check_resume_world_size`).
        """
        if not state_dict:
            return
        fitting = getattr(getattr(self.trainer, "state", None), "fn", "fit") == "fit"
        world = self._rank_world()[1]
        if fitting:
            check_resume_world_size(state_dict.get("world_size"), world)
        self.start_iteration = int(state_dict.get("next_iteration", 0))
        if not fitting:  # evaluation reads no training batches
            return
        current = {
            "seed": self.seed,
            "labeled_batch_size": self.labeled_batch_size,
            "unlabeled_batch_size": self.unlabeled_batch_size,
        }
        changed = {
            k: (state_dict[k], v)
            for k, v in current.items()
            if k in state_dict and state_dict[k] is not None and state_dict[k] != v
        }
        if changed:
            detail = ", ".join(f"{k}: {old} -> {new}" for k, (old, new) in changed.items())
            rank_zero_warn(
                f"Resuming the data stream at iteration {self.start_iteration} with changed "
                f"settings ({detail}); the batches will differ from the interrupted run's."
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
