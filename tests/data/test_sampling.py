"""Iteration-indexed sampling: positions, sharding, resume, wrapping, epochs."""

from __future__ import annotations

import itertools

import pytest
from torch.utils.data import DistributedSampler

from advmim_lightning.data.sampling import (
    EvalShardSampler,
    IterationSampler,
    StreamIndexer,
    StreamSpec,
    rank_positions,
)

STREAMS = [StreamSpec("labeled", 0, 10, 2), StreamSpec("unlabeled", 1, 30, 3)]


def sampler(rank: int = 0, world: int = 1, per_epoch: int = 5, **kwargs) -> IterationSampler:
    return IterationSampler(
        list(range(10)), STREAMS, per_epoch, seed=7, num_replicas=world, rank=rank, **kwargs
    )


def test_positions_by_hand() -> None:
    # (it * w + r) * B + j
    assert list(rank_positions(0, 0, 1, 3)) == [0, 1, 2]
    assert list(rank_positions(2, 1, 2, 3)) == [15, 16, 17]
    plan = sampler(rank=1, world=2).plan(2)
    assert plan[0] == 2
    assert [g for _, g in plan[1][0]] == [10, 11]  # labeled, B=2: (2*2+1)*2
    assert [g for _, g in plan[1][1]] == [15, 16, 17]  # unlabeled, B=3


def test_each_pass_is_a_permutation_and_passes_differ() -> None:
    indexer = StreamIndexer(10, seed=7, stream_id=0)
    first = [indexer.index(g) for g in range(10)]
    second = [indexer.index(g) for g in range(10, 20)]
    assert sorted(first) == list(range(10)) and sorted(second) == list(range(10))
    assert first != second
    assert first == [StreamIndexer(10, 7, 0).index(g) for g in range(10)]  # pure function
    assert first != [StreamIndexer(10, 7, 1).index(g) for g in range(10)]  # stream matters


def test_two_ranks_never_duplicate_within_a_pass() -> None:
    ranks = [sampler(rank=r, world=2, per_epoch=5) for r in range(2)]
    seen = {0: [], 1: []}
    for s in ranks:
        for _, streams in s:
            for stream, pairs in enumerate(streams):
                seen[stream] += [g for _, g in pairs]
    # 5 iterations x 2 ranks x B: consecutive positions, each read once.
    assert sorted(seen[0]) == list(range(20)) and sorted(seen[1]) == list(range(30))
    labeled = [i for s in ranks for _, st in s for i, g in st[0] if g < 10]
    assert sorted(labeled) == list(range(10))  # first labeled pass: every slice exactly once


def test_resume_gives_the_same_plans() -> None:
    full = list(itertools.chain.from_iterable(
        list(_with_epoch(sampler(per_epoch=5), e)) for e in range(3)
    ))  # fmt: skip
    resumed = sampler(per_epoch=5, start_iteration=7)
    resumed.set_epoch(0)  # Lightning may not have called set_epoch yet when iter() happens
    part = list(resumed)
    assert [p[0] for p in part] == [7, 8, 9]  # to the end of the iteration's epoch
    resumed.set_epoch(2)
    part += list(resumed)
    assert part == full[7:]


def _with_epoch(s: IterationSampler, epoch: int) -> IterationSampler:
    s.set_epoch(epoch)
    return s


def test_epoch_ranges_and_length() -> None:
    s = sampler(per_epoch=4)
    assert len(s) == 4 and isinstance(s, DistributedSampler)
    s.set_epoch(3)
    assert s.iteration_range() == range(12, 16)
    s.set_start_iteration(13)
    assert s.iteration_range() == range(13, 16)
    s.set_epoch(4)  # start iteration behind: ignored
    assert s.iteration_range() == range(16, 20)
    s.set_epoch(0)
    s.set_start_iteration(8)  # epoch-end checkpoint: starts the next epoch
    assert s.iteration_range() == range(8, 12)


def test_range_is_fixed_when_the_iterator_is_made() -> None:
    s = sampler(per_epoch=4)
    iterator = iter(s)
    s.set_epoch(5)
    assert next(iterator)[0] == 0


def test_small_pool_wraps_into_the_next_pass() -> None:
    s = IterationSampler([0, 1, 2], [StreamSpec("labeled", 0, 3, 8)], 2, seed=0)
    pairs = [p for _, (st,) in s for p in st]
    indices = [i for i, _ in pairs]
    assert len(indices) == 16 and set(indices) == {0, 1, 2}
    for start in range(0, 15, 3):  # every aligned window of 3 positions is one pass
        assert sorted(indices[start : start + 3]) == [0, 1, 2]


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="rank must be in"):
        sampler(rank=2, world=2)
    with pytest.raises(ValueError, match="iterations_per_epoch"):
        sampler(per_epoch=0)
    with pytest.raises(ValueError, match="size >= 1"):
        IterationSampler([], [StreamSpec("labeled", 0, 0, 2)], 1)


def test_eval_shards_cover_every_volume_and_pad_so_no_rank_is_empty() -> None:
    parts = [list(EvalShardSampler(list(range(5)), num_replicas=2, rank=r)) for r in range(2)]
    assert parts == [[0, 2, 4], [1, 3, 0]]  # volume 0 repeats; the metrics keep it once
    assert [len(EvalShardSampler(list(range(5)), 2, r)) for r in range(2)] == [3, 3]
    one_case = [list(EvalShardSampler([0], num_replicas=2, rank=r)) for r in range(2)]
    assert one_case == [[0], [0]]
    assert list(EvalShardSampler(list(range(4)), 2, 1)) == [1, 3]
