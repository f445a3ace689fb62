"""Torch datasets over loaded volumes: training slices, paired training batches, eval volumes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from advmim_lightning.data.sampling import BatchPlan
from advmim_lightning.data.transforms import SliceAugmenter
from advmim_lightning.data.types import EvalItem, TrainingBatch, Volume

__all__ = [
    "ITERATION_KEY",
    "LABELED_STREAM",
    "UNLABELED_STREAM",
    "PairedTrainingDataset",
    "SliceDataset",
    "VolumeDataset",
    "collate_training_batch",
    "unwrap_single_item",
]

LABELED_STREAM = 0
UNLABELED_STREAM = 1
ITERATION_KEY = "iteration"


def _writable(array: np.ndarray) -> np.ndarray:
    """A contiguous, writable view or copy (memory-mapped caches are read-only)."""
    array = np.ascontiguousarray(array)
    return array if array.flags.writeable else array.copy()


class SliceDataset(Dataset):
    """2D slices of a list of volumes, augmented with randomness keyed by sample position.

    Item ``i`` is slice ``slices[i] = (volume index, d)``. Indexing with a pair
    ``(index, position)`` (what :class:`~advmim_lightning.data.sampling.IterationSampler`
    yields) augments with parameters keyed by ``(seed, stream, position)``; a plain integer
    index uses ``position = index``.

    Args:
        volumes: The volumes. For an unlabeled dataset pass volumes without labels (see
            :meth:`without_labels`); labels are never read when ``labeled`` is False.
        slices: ``(volume index, slice index)`` pairs, in dataset order.
        augmenter: Augmentation and resize.
        labeled: Whether items carry a label.
        stream: Stream id mixed into augmentation keys.
        seed: Run seed.
    """

    def __init__(
        self,
        volumes: Sequence[Volume],
        slices: Sequence[tuple[int, int]],
        augmenter: SliceAugmenter,
        labeled: bool,
        stream: int,
        seed: int = 0,
    ) -> None:
        self.volumes = list(volumes)
        self.slices = [(int(v), int(d)) for v, d in slices]
        self.augmenter = augmenter
        self.labeled = labeled
        self.stream = stream
        self.seed = seed
        if labeled and any(self.volumes[v].label is None for v, _ in self.slices):
            raise ValueError("a labeled SliceDataset needs a label on every volume it uses")

    @staticmethod
    def without_labels(volumes: Sequence[Volume]) -> list[Volume]:
        """Copies of ``volumes`` (sharing the image arrays) with the labels removed."""
        return [dataclasses.replace(v, label=None) for v in volumes]

    def __len__(self) -> int:
        return len(self.slices)

    def case_ids(self) -> list[str]:
        """Volume id of every item, in dataset order."""
        return [self.volumes[v].case_id for v, _ in self.slices]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, object]:
        """Returns ``{"image": C x H x W, "label": H x W (labeled only), "case_id": str}``."""
        index, position = (key, key) if isinstance(key, int) else key
        volume_index, d = self.slices[index]
        volume = self.volumes[volume_index]
        image = torch.from_numpy(_writable(volume.image[:, d]))
        label = None
        if self.labeled:
            assert volume.label is not None
            label = torch.from_numpy(_writable(volume.label[d]))
        params = self.augmenter.params(self.seed, self.stream, position)
        image, label = self.augmenter(image, label, params)
        item: dict[str, object] = {"image": image, "case_id": volume.case_id}
        if label is not None:
            item["label"] = label
        return item


class PairedTrainingDataset(Dataset):
    """Builds whole training batches from a :data:`BatchPlan` (one plan per iteration).

    Args:
        labeled: The labeled slices.
        unlabeled: The unlabeled slices, or None when there is no unlabeled stream.
    """

    def __init__(
        self,
        labeled: SliceDataset,
        unlabeled: SliceDataset | None,
        planner: Callable[[int], BatchPlan] | None = None,
    ) -> None:
        self.labeled = labeled
        self.unlabeled = unlabeled
        #: Maps an integer index ``i`` to the plan of iteration ``i`` (set by the data module).
        self.planner = planner

    def __len__(self) -> int:
        return len(self.labeled)

    @staticmethod
    def _stack(dataset: SliceDataset, pairs: Sequence[tuple[int, int]]) -> dict[str, object]:
        items = [dataset[pair] for pair in pairs]
        out: dict[str, object] = {
            "image": torch.stack([it["image"] for it in items]),  # type: ignore[misc]
        }
        if dataset.labeled:
            out["label"] = torch.stack([it["label"] for it in items])  # type: ignore[misc]
        out["case_id"] = [it["case_id"] for it in items]
        return out

    def __getitem__(self, plan: BatchPlan | int) -> TrainingBatch:
        """Returns ``{"labeled": {...}, "unlabeled": {...}, "iteration": int}`` for one plan.

        ``"iteration"`` is the global iteration index of the batch; the data module removes it
        (and records it for resuming) before the batch reaches the LightningModule. An integer
        ``i`` (what a plain sampler yields, e.g. after Lightning's ``overfit_batches`` replaced
        the :class:`~advmim_lightning.data.sampling.IterationSampler`) reads the batch of
        iteration ``i``.

        Raises:
            TypeError: For an integer index when no ``planner`` was given.
        """
        if isinstance(plan, (int, np.integer)):
            if self.planner is None:
                raise TypeError(
                    f"PairedTrainingDataset is indexed by the IterationSampler's batch plans, "
                    f"got the integer {plan} and has no planner to turn it into one"
                )
            plan = self.planner(int(plan))
        iteration, streams = plan
        batch: dict[str, object] = {"labeled": self._stack(self.labeled, streams[0])}
        if self.unlabeled is not None:
            batch["unlabeled"] = self._stack(self.unlabeled, streams[1])
        batch[ITERATION_KEY] = iteration
        return batch  # type: ignore[return-value]


def collate_training_batch(batch: TrainingBatch) -> TrainingBatch:
    """Collate function of the training loader: the dataset already returns whole batches."""
    return batch


class VolumeDataset(Dataset):
    """Whole volumes for validation, test and prediction.

    Args:
        volumes: The volumes, in split order (``case_index`` is the position in this list).
    """

    def __init__(self, volumes: Sequence[Volume]) -> None:
        self.volumes = list(volumes)

    def __len__(self) -> int:
        return len(self.volumes)

    def case_ids(self) -> list[str]:
        """Volume id of every item."""
        return [v.case_id for v in self.volumes]

    def __getitem__(self, index: int) -> EvalItem:
        """Returns the :class:`~advmim_lightning.data.types.EvalItem` of volume ``index``."""
        v = self.volumes[index]
        item: dict[str, object] = {
            "image": torch.from_numpy(np.array(v.image, dtype=np.float32, copy=True)),
            "case_id": v.case_id,
            "case_index": index,
            "spacing": tuple(float(s) for s in v.spacing),
            "spacing_known": bool(v.spacing_known),
            "affine": torch.from_numpy(np.array(v.affine, dtype=np.float64, copy=True)),
            "slice_axis": int(v.slice_axis),
            "source": v.source,
        }
        if v.label is not None:
            item["label"] = torch.from_numpy(np.asarray(v.label).astype(np.int64))
        return item  # type: ignore[return-value]


def unwrap_single_item(batch: list[EvalItem]) -> EvalItem:
    """Collate function of the evaluation loaders (batch size 1): returns the item itself."""
    if len(batch) != 1:
        raise ValueError(f"evaluation loaders use batch size 1, got a batch of {len(batch)}")
    return batch[0]
