"""Tiny generated datasets for the data tests (written once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from advmim_lightning.data import AdvMIMDataModule, PhantomSettings
from advmim_lightning.data.synthetic import write_tiny_acdc, write_tiny_nifti

TINY = {
    "image_size": (32, 32),
    "num_workers": 0,
    "labeled_batch_size": 2,
    "unlabeled_batch_size": 2,
}
#: The tiny phantom: 6 cases x 3 slices x 32 x 32.
TINY_PHANTOM = PhantomSettings(cases=6, slices=3, size=32)
PHANTOM = {"phantom": TINY_PHANTOM}


@pytest.fixture(scope="session")
def tiny_acdc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 patients x 2 frames x 3 slices: patients 1-4 train (24 slices), 5 val, 6 test."""
    return write_tiny_acdc(tmp_path_factory.mktemp("acdc"), num_patients=6, spacing=True)


@pytest.fixture(scope="session")
def tiny_nifti(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 labeled + 2 unlabeled training cases, 2 test cases, 1 channel."""
    return write_tiny_nifti(tmp_path_factory.mktemp("nifti"))


@pytest.fixture(scope="session")
def tiny_nifti_2ch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like ``tiny_nifti`` with two channels and unlabeled test images."""
    return write_tiny_nifti(tmp_path_factory.mktemp("nifti2"), channels=2, test_labels=False)


def _make_phantom_dm(**kwargs) -> AdvMIMDataModule:
    return AdvMIMDataModule(**{**TINY, **PHANTOM, **kwargs})


@pytest.fixture
def tiny() -> dict:
    """Data module arguments for tiny runs: 32 x 32 images, batches of 2, no workers."""
    return dict(TINY)


@pytest.fixture
def acdc_dm():
    """Factory: a tiny-settings data module over an ACDC-layout folder."""

    def make(root: Path, **kwargs) -> AdvMIMDataModule:
        return AdvMIMDataModule(str(root), layout="acdc", **{**TINY, **kwargs})

    return make


@pytest.fixture
def nifti_dm():
    """Factory: a tiny-settings data module over a NIfTI-layout folder."""

    def make(root: Path, **kwargs) -> AdvMIMDataModule:
        return AdvMIMDataModule(str(root), layout="nifti", **{**TINY, **kwargs})

    return make


@pytest.fixture
def make_phantom_dm():
    """Factory of tiny phantom data modules (6 cases x 3 slices x 32 x 32, batches of 2)."""
    return _make_phantom_dm
