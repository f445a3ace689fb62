"""The method: a plain-torch model and the LightningModule that wires it.

- :mod:`~advmim_lightning.method.config`: the methods' defaults, the checks of every setting
  and the frozen :class:`~advmim_lightning.method.config.MethodSettings`.
- :mod:`~advmim_lightning.method.model`: :class:`AdvMIMModel`, the method as plain torch (no
  Lightning): networks, masking, one iteration's losses, slice-wise inference.
- :mod:`~advmim_lightning.method.objective`: the loss terms from the segmenters' logits.
- :mod:`~advmim_lightning.method.lightning_module`: :class:`AdvMIMModule`, Lightning's wiring.
- Supporting modules: ``schedules`` (poly rate, CTCT ramp), ``optim`` (SGD per part,
  clipping), ``randomness`` (every seed), ``nonfinite`` (non-finite checks), ``contracts``
  (checks of networks, batches, trainers), ``cuda_graph`` (the iteration as one CUDA graph),
  ``records`` (what is logged).

Importing this package imports no Lightning; only ``lightning_module`` does.
"""

from advmim_lightning.method.config import METHOD_DEFAULTS, NETWORK_NAMES, Method
from advmim_lightning.method.objective import SegmenterOutputs

__all__ = ["METHOD_DEFAULTS", "NETWORK_NAMES", "Method", "SegmenterOutputs"]
