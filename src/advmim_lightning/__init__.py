"""advmim-lightning: AdvMIM semi-supervised medical image segmentation on PyTorch Lightning.

The two entry points most users need are re-exported here:

- :class:`AdvMIMModule`: the LightningModule (AdvMIM, CTCT and supervised baselines).
- :class:`AdvMIMDataModule`: paired labeled + unlabeled batches over ACDC-layout h5 files,
  NIfTI folders or the built-in phantom.

They are imported lazily so that ``import advmim_lightning`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

__all__ = ["AdvMIMDataModule", "AdvMIMModule", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from advmim_lightning.data import AdvMIMDataModule
    from advmim_lightning.method.lightning_module import AdvMIMModule


def __getattr__(name: str) -> Any:
    if name == "AdvMIMModule":
        from advmim_lightning.method.lightning_module import AdvMIMModule

        return AdvMIMModule
    if name == "AdvMIMDataModule":
        from advmim_lightning.data import AdvMIMDataModule

        return AdvMIMDataModule
    raise AttributeError(f"module 'advmim_lightning' has no attribute {name!r}")
