"""The training step's seed mixer, kept at its old import path.

``mix_seed`` is :func:`advmim_lightning.randomness.iteration_seed`; the library's seeds (and
why there are two mixers) are described in :mod:`advmim_lightning.randomness`.
"""

from __future__ import annotations

from advmim_lightning.randomness import iteration_seed as mix_seed

__all__ = ["mix_seed"]
