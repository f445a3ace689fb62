"""``PredictionWriter`` after ``AdvMIMModule.predict_step``: one file per case, input axis order."""

from __future__ import annotations

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from tiny import Volumes, first_item, make_module


def test_predict_returns_labels_in_the_input_axis_order_and_the_writer_saves_nifti(tmp_path):
    import nibabel as nib

    from advmim_lightning.evaluation.prediction_writer import PredictionWriter

    module = make_module("supervised")
    writer = PredictionWriter(output_dir=str(tmp_path / "pred"), file_format="nifti")
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        callbacks=[writer],
        default_root_dir=tmp_path,
    )
    loader = DataLoader(Volumes(n=1, depth=3, size=40), batch_size=1, collate_fn=first_item)
    (out,) = trainer.predict(module, dataloaders=loader)
    assert out["prediction"].shape == (40, 40, 3)  # depth moved back to slice_axis=2
    saved = nib.load(tmp_path / "pred" / "vol0.nii.gz")
    assert saved.shape == (40, 40, 3)
    assert (saved.affine == Volumes()[0]["affine"].numpy()).all()
    assert (saved.get_fdata() == out["prediction"]).all()
