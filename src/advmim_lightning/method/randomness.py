"""Every seed of the library, as a pure function of integer keys (no saved RNG state).

Two mixers live here, and both stay: each was fixed when the numbers it keys were first pinned
(``tests/test_golden.py``, the phantom data, the data splits), so replacing one by the other
would change every sampled batch and every mask. They key different things:

- :func:`iteration_seed` (splitmix64 mixing) keys the *training step*: every iteration
  re-seeds the masked domain's device generator (``AdvMIMModule.mask_generator``) from
  ``(rng_seed, global rank, iteration)`` and torch's global generators, which dropout and drop
  path draw from, from ``(rng_seed, global rank, iteration, 1)``. Ranks therefore differ, and a
  resumed run repeats the interrupted one exactly.
- :func:`sample_seed` and :func:`keyed_uniforms` (blake2b hashing) key the *data*: sampling
  orders (``(tag, seed, stream, pass)``), augmentation parameters (``(seed, stream,
  position)``), the cases of a generated phantom and the labeled / unlabeled split. The same
  key gives the same numbers in any process, any data-loader worker and after a resume.

``tests/method/test_randomness.py`` pins values of each, so a change to either is caught.
"""

from __future__ import annotations

import hashlib
import struct

import torch

__all__ = ["IterationRandomness", "iteration_seed", "keyed_uniforms", "sample_seed"]

_MASK_64 = 0xFFFFFFFFFFFFFFFF
_INV_2_53 = 1.0 / float(1 << 53)


def iteration_seed(*keys: int) -> int:
    """A 63-bit seed of the training step's generators (splitmix64-style mixing).

    Args:
        *keys: Integers, e.g. ``(rng_seed, global rank, iteration)``; order matters.

    Returns:
        A non-negative integer below ``2**63``, the same in every process and run.
    """
    state = 0x9E3779B97F4A7C15
    for key in keys:
        state = (state ^ (key & _MASK_64)) * 0xBF58476D1CE4E5B9 & _MASK_64
        state = (state ^ (state >> 31)) * 0x94D049BB133111EB & _MASK_64
    return state >> 1


def _digest(values: tuple[int, ...], size: int) -> bytes:
    packed = b"".join(struct.pack("<q", v & 0x7FFFFFFFFFFFFFFF) for v in values)
    return hashlib.blake2b(packed, digest_size=size, person=b"advmim-data").digest()


def sample_seed(*values: int) -> int:
    """A 63-bit seed of the data's randomness (blake2b hash of the keys).

    Args:
        *values: Integers (e.g. ``seed, stream, pass``); order matters.

    Returns:
        A non-negative integer below ``2**63``.
    """
    return int.from_bytes(_digest(values, 8), "little") & 0x7FFFFFFFFFFFFFFF


def keyed_uniforms(count: int, *values: int) -> list[float]:
    """``count`` floats uniform in ``[0, 1)`` determined by the key ``values`` (blake2b).

    Args:
        count: How many numbers (1 to 8).
        *values: The key.

    Returns:
        ``count`` floats, each with 53 random bits.

    Raises:
        ValueError: When ``count`` is outside 1..8.
    """
    if not 1 <= count <= 8:
        raise ValueError(f"count must be in 1..8, got {count}")
    raw = _digest(values, 8 * count)
    return [
        (int.from_bytes(raw[8 * i : 8 * i + 8], "little") >> 11) * _INV_2_53 for i in range(count)
    ]


class IterationRandomness:
    """The training step's random draws, keyed by ``(rng_seed, rank, iteration)``.

    :meth:`mask_generator` gives the masked domain's device generator seeded for an
    iteration (a host-side re-seed, without device sync);
    :meth:`seed_global` keys torch's global generators, which dropout and drop path draw from,
    by ``(rng_seed, rank, iteration, 1)``. Nothing needs saving: a resumed run repeats the
    interrupted one exactly.

    Args:
        rng_seed: The run's seed (``AdvMIMModule(rng_seed=...)``).
    """

    def __init__(self, rng_seed: int) -> None:
        self.rng_seed = rng_seed
        self._generator: torch.Generator | None = None
        self._kept: tuple[torch.Tensor, list[torch.Tensor] | None] | None = None

    def mask_generator(self, device: torch.device, rank: int, iteration: int) -> torch.Generator:
        """The mask generator on ``device``, freshly seeded for ``(rank, iteration)``: draw all
        of an iteration's masks from one call's generator."""
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
        self._generator.manual_seed(iteration_seed(self.rng_seed, rank, iteration))
        return self._generator

    def seed_global(self, rank: int, iteration: int) -> None:
        """Seed torch's global generators (dropout, drop path) for ``(rank, iteration)``."""
        torch.manual_seed(iteration_seed(self.rng_seed, rank, iteration, 1))

    def keep_global_state(self) -> None:
        """Remember torch's global generator states (CPU and CUDA) before the training steps
        re-seed them; :meth:`restore_global_state` puts them back when the fit ends."""
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        self._kept = (torch.get_rng_state(), cuda)

    def restore_global_state(self) -> None:
        """Put back the states :meth:`keep_global_state` remembered (nothing if none)."""
        kept, self._kept = self._kept, None
        if kept is None:
            return
        torch.set_rng_state(kept[0])
        if kept[1] is not None:
            torch.cuda.set_rng_state_all(kept[1])
