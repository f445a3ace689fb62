"""Counter-based randomness: random numbers as a pure function of integer keys.

Sampling orders and augmentation parameters are derived by hashing keys such as
``(seed, stream, position)`` instead of advancing a global generator. The same key gives the
same numbers in any process, any data-loader worker and after a resume, which is what makes
training data exactly reproducible.
"""

from __future__ import annotations

import hashlib
import struct

__all__ = ["keyed_uniforms", "mix_seed"]

_INV_2_53 = 1.0 / float(1 << 53)


def _digest(values: tuple[int, ...], size: int) -> bytes:
    packed = b"".join(struct.pack("<q", v & 0x7FFFFFFFFFFFFFFF) for v in values)
    return hashlib.blake2b(packed, digest_size=size, person=b"advmim-data").digest()


def mix_seed(*values: int) -> int:
    """Hashes integers into one 63-bit seed.

    Args:
        *values: Integers (e.g. ``seed, stream, pass``); order matters.

    Returns:
        A non-negative integer below ``2**63``.
    """
    return int.from_bytes(_digest(values, 8), "little") & 0x7FFFFFFFFFFFFFFF


def keyed_uniforms(count: int, *values: int) -> list[float]:
    """Returns ``count`` floats uniform in ``[0, 1)`` determined by the key ``values``.

    Args:
        count: How many numbers (1 to 8).
        *values: The key.

    Returns:
        ``count`` floats, each with 53 random bits.
    """
    if not 1 <= count <= 8:
        raise ValueError(f"count must be in 1..8, got {count}")
    raw = _digest(values, 8 * count)
    return [
        (int.from_bytes(raw[8 * i : 8 * i + 8], "little") >> 11) * _INV_2_53 for i in range(count)
    ]
