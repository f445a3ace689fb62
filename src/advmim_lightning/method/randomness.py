"""How a training iteration's randomness is keyed (no saved RNG state needed).

Every iteration re-seeds its generators with :func:`mix_seed`: the masked domain's own device
generator (``AdvMIMModule.mask_generator``) from ``(rng_seed, global rank, iteration)``, and
torch's global generators, which dropout and drop path draw from, from ``(rng_seed, global
rank, iteration, 1)``. Ranks therefore differ, and a resumed run repeats the interrupted one
exactly.
"""

from __future__ import annotations


def mix_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (splitmix64-style mixing, stable across runs)."""
    state = 0x9E3779B97F4A7C15
    for key in keys:
        state = (state ^ (key & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        state = (state ^ (state >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return state >> 1
