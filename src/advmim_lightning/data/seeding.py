"""The data's seed mixer, kept at its old import path.

``mix_seed`` is :func:`advmim_lightning.randomness.sample_seed` and ``keyed_uniforms`` is
:func:`advmim_lightning.randomness.keyed_uniforms`; the library's seeds (and why there are two
mixers) are described in :mod:`advmim_lightning.randomness`.
"""

from __future__ import annotations

from advmim_lightning.randomness import keyed_uniforms
from advmim_lightning.randomness import sample_seed as mix_seed

__all__ = ["keyed_uniforms", "mix_seed"]
