"""Lightning callbacks of the library, one file each.

- :mod:`~advmim_lightning.callbacks.run_checkpoint`: :class:`RunCheckpoint`, the run's
  checkpoints (``last.ckpt`` kept current, files written atomically).
- :mod:`~advmim_lightning.callbacks.prediction_writer`: :class:`PredictionWriter`, one
  prediction file per case (:func:`prediction_file_name`).
- :mod:`~advmim_lightning.callbacks.panels`: :class:`ValidationPanels`, overlay panels of a few
  validation cases.

The classes are imported here, so configs and code keep naming them
``advmim_lightning.callbacks.<Class>``. The per-case test CSV is written by the module
(:func:`advmim_lightning.method.inference.write_test_csv`) and the non-finite checks live in
:mod:`advmim_lightning.nonfinite`: neither is a callback.
"""

from advmim_lightning.callbacks.panels import ValidationPanels
from advmim_lightning.callbacks.prediction_writer import PredictionWriter, prediction_file_name
from advmim_lightning.callbacks.run_checkpoint import RunCheckpoint

__all__ = ["PredictionWriter", "RunCheckpoint", "ValidationPanels", "prediction_file_name"]
