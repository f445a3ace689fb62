"""Iteration-indexed sampling of the labeled and unlabeled training streams.

Training length is counted in iterations. Iteration ``it`` of rank ``r`` (of ``w`` ranks) takes,
from each stream ``s`` with batch size ``B``, the *global sample positions*
``g = (it * w + r) * B + j`` for ``j = 0..B-1``. Position ``g`` of a stream over a dataset of
``N`` items reads item ``perm[g % N]`` of pass ``p = g // N``, where ``perm`` is a permutation
seeded by ``(seed, stream, p)``. Consequences:

- the batches are a pure function of ``(seed, iteration, rank, world size)``: a run resumed at
  iteration ``k`` sees exactly the batches an uninterrupted run sees from ``k`` on, whatever
  the number of data-loader workers;
- ranks read disjoint positions, so within a pass no item is duplicated across ranks;
- a stream smaller than its batch (or than ``w * B``) simply wraps into the next pass.

:class:`IterationSampler` subclasses :class:`~torch.utils.data.DistributedSampler` only so that
Lightning (``use_distributed_sampler=True``) recognises it as already sharded and leaves it
alone; it does its own sharding as above.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset, DistributedSampler

from advmim_lightning.method.randomness import sample_seed

__all__ = [
    "BatchPlan",
    "EvalShardSampler",
    "IterationSampler",
    "StreamIndexer",
    "StreamSpec",
    "rank_positions",
]

# (global iteration, one entry per stream: the (dataset index, global position) pairs of this rank)
BatchPlan = tuple[int, tuple[tuple[tuple[int, int], ...], ...]]

_PERMUTATION_TAG = 0x5045524D  # "PERM"


@dataclass(frozen=True)
class StreamSpec:
    """One training stream.

    Attributes:
        name: Stream name (``"labeled"`` or ``"unlabeled"``).
        stream_id: Integer mixed into every seed of the stream (labeled 0, unlabeled 1).
        size: Number of items (slices) in the stream's dataset; >= 1.
        batch_size: Items per iteration and rank; >= 1.
    """

    name: str
    stream_id: int
    size: int
    batch_size: int


class StreamIndexer:
    """Maps global sample positions of one stream to dataset indices.

    Args:
        size: Number of items ``N``.
        seed: Run seed.
        stream_id: Stream id mixed into the permutation seeds.
        cache_size: Number of pass permutations kept in memory.
    """

    def __init__(self, size: int, seed: int, stream_id: int, cache_size: int = 4) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size
        self.seed = seed
        self.stream_id = stream_id
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_size = cache_size

    def permutation(self, pass_index: int) -> np.ndarray:
        """The item order of pass ``pass_index`` (int64 array of length ``N``)."""
        perm = self._cache.get(pass_index)
        if perm is None:
            rng = np.random.default_rng(
                sample_seed(_PERMUTATION_TAG, self.seed, self.stream_id, pass_index)
            )
            perm = rng.permutation(self.size)
            self._cache[pass_index] = perm
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(pass_index)
        return perm

    def index(self, position: int) -> int:
        """Dataset index read at global ``position``."""
        return int(self.permutation(position // self.size)[position % self.size])


def rank_positions(iteration: int, rank: int, world_size: int, batch_size: int) -> range:
    """Global sample positions read by ``rank`` at ``iteration``.

    Args:
        iteration: Global iteration index (>= 0).
        rank: Rank in ``[0, world_size)``.
        world_size: Number of ranks.
        batch_size: Per-rank batch size of the stream.

    Returns:
        ``range((iteration * world_size + rank) * batch_size, ... + batch_size)``.
    """
    start = (iteration * world_size + rank) * batch_size
    return range(start, start + batch_size)


class IterationSampler(DistributedSampler):
    """Yields one :data:`BatchPlan` per training iteration, for one rank.

    An epoch is ``iterations_per_epoch`` iterations: epoch ``e`` covers global iterations
    ``[e * I, (e + 1) * I)``. An iterator created when the epoch is ``e`` and
    ``start_iteration`` is ``k`` yields the iterations from ``max(e * I, k)`` to the end of that
    iteration's epoch, so setting ``start_iteration`` to the number of iterations already done
    resumes mid-epoch. ``len()`` is always ``I`` (what Lightning counts per epoch).

    Args:
        dataset: The dataset the plans index into (only stored, as DistributedSampler does).
        streams: The streams, in the order of the plan's entries.
        iterations_per_epoch: ``I`` (>= 1).
        seed: Run seed.
        num_replicas: World size ``w``.
        rank: This process's rank ``r``.
        start_iteration: First global iteration to yield (see above).

    Raises:
        ValueError: On an empty stream list, a stream of size or batch size 0, a rank outside
            ``[0, num_replicas)`` or ``iterations_per_epoch < 1``.
    """

    def __init__(
        self,
        dataset: Dataset,
        streams: Sequence[StreamSpec],
        iterations_per_epoch: int,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        start_iteration: int = 0,
    ) -> None:
        if not streams:
            raise ValueError("streams must not be empty")
        for s in streams:
            if s.size < 1 or s.batch_size < 1:
                raise ValueError(f"stream {s.name!r} needs size >= 1 and batch_size >= 1, got {s}")
        if iterations_per_epoch < 1:
            raise ValueError(f"iterations_per_epoch must be >= 1, got {iterations_per_epoch}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got rank={rank}")
        if start_iteration < 0:
            raise ValueError(f"start_iteration must be >= 0, got {start_iteration}")
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=False, seed=seed, drop_last=False
        )
        self.streams = tuple(streams)
        self.iterations_per_epoch = int(iterations_per_epoch)
        self.start_iteration = int(start_iteration)
        self._indexers = tuple(StreamIndexer(s.size, seed, s.stream_id) for s in self.streams)

    def set_start_iteration(self, iteration: int) -> None:
        """Sets the first global iteration the next iterator yields (for resuming)."""
        if iteration < 0:
            raise ValueError(f"start_iteration must be >= 0, got {iteration}")
        self.start_iteration = int(iteration)

    def iteration_range(self) -> range:
        """Global iterations the next iterator yields, given the epoch and start iteration."""
        per_epoch = self.iterations_per_epoch
        begin = max(self.epoch * per_epoch, self.start_iteration)
        return range(begin, (begin // per_epoch + 1) * per_epoch)

    def plan(self, iteration: int) -> BatchPlan:
        """``(iteration, pairs)``: the ``(index, position)`` pairs of every stream for this rank."""
        return iteration, tuple(
            tuple(
                (indexer.index(g), g)
                for g in rank_positions(iteration, self.rank, self.num_replicas, spec.batch_size)
            )
            for spec, indexer in zip(self.streams, self._indexers, strict=True)
        )

    def __iter__(self) -> Iterator[BatchPlan]:  # type: ignore[override]
        # The range is fixed now, not when the generator first runs: Lightning may call
        # set_epoch() between iter() and the first next().
        iterations = self.iteration_range()
        return (self.plan(it) for it in iterations)

    def __len__(self) -> int:
        return self.iterations_per_epoch


class EvalShardSampler(DistributedSampler):
    """Evaluation order for one rank: items ``rank, rank + w, rank + 2w, ...``, padded.

    Every rank gets ``ceil(N / w)`` items so that no rank is left without a batch (Lightning
    refuses an empty loader on any rank); the few padding items repeat volumes from the start.
    The metrics gather results by case index and keep one score per volume, so a repeated
    volume is never counted twice, and a repeated prediction rewrites the same file. A
    DistributedSampler subclass so that Lightning does not replace it.

    Args:
        dataset: The evaluation dataset.
        num_replicas: World size.
        rank: This rank.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got rank={rank}")
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self._size = len(dataset)  # type: ignore[arg-type]
        self._per_rank = -(-self._size // num_replicas) if self._size else 0

    def __iter__(self) -> Iterator[int]:  # type: ignore[override]
        positions = range(self.rank, self._per_rank * self.num_replicas, self.num_replicas)
        return iter(p % self._size for p in positions)

    def __len__(self) -> int:
        return self._per_rank
