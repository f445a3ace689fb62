"""Both seed mixers of :mod:`advmim_lightning.method.randomness`, pinned value by value.

Every mask, dropout draw, sampled batch, augmentation and phantom case depends on these
numbers; a change to either mixer changes every result, so it must fail here first.
"""

from __future__ import annotations

import pytest

from advmim_lightning.method.randomness import iteration_seed, keyed_uniforms, sample_seed


def test_iteration_seed_is_pinned():
    assert iteration_seed(0, 0, 0) == 4479355891771296771  # rng_seed 0, rank 0, iteration 0
    assert iteration_seed(0, 0, 0, 1) == 7835217612124429651  # the same iteration's dropout
    assert iteration_seed(11, 1, 7) == 8168047729425135792
    assert iteration_seed(2**63 + 5, 3) == 2160286170006233294  # keys wrap at 64 bits


def test_sample_seed_and_keyed_uniforms_are_pinned():
    assert sample_seed(0) == 4007450698889667098
    assert sample_seed(0x53504C54, 11) == 9092192573786914199  # the split of data seed 11
    assert sample_seed(1, 2, 3, 4) == 1674572945926080776
    assert keyed_uniforms(3, 11, 0, 5) == [
        0.7547245931410138,
        0.1075650924680911,
        0.08696129803167674,
    ]
    with pytest.raises(ValueError, match=r"count must be in 1\.\.8"):
        keyed_uniforms(9, 1)
