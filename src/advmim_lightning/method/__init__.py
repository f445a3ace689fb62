"""The AdvMIM method and its baselines as plain torch, apart from Lightning's wiring.

- :mod:`~advmim_lightning.method.config`: per-method defaults (:data:`METHOD_DEFAULTS`) and the
  checks that turn ``AdvMIMModule``'s arguments into the settings a run trains with.
- :mod:`~advmim_lightning.method.objective`: the loss terms of one iteration
  (:class:`SegmenterOutputs`).
- :mod:`~advmim_lightning.method.randomness`: the old import path of the training step's seed
  mixer (:mod:`advmim_lightning.method.randomness` holds every seed of the library).
- :mod:`~advmim_lightning.evaluation.inference`: slice-wise prediction of whole cases and the
  per-case test table.
"""

from advmim_lightning.method.config import METHOD_DEFAULTS, NETWORK_NAMES, Method
from advmim_lightning.method.objective import SegmenterOutputs

__all__ = ["METHOD_DEFAULTS", "NETWORK_NAMES", "Method", "SegmenterOutputs"]
