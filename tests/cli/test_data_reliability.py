"""Data reliability through the command line and as a Lightning user (Reliability III).

Each test runs what a user runs (``advmim ...`` through ``main([...])``, or the data module
with a Lightning ``Trainer``-style call order) on data written in ``tmp_path``, and checks the
message names the file, the value found and what was expected.
"""

from __future__ import annotations

from advmim_lightning.data.synthetic import write_tiny_acdc
from cli.test_cli import ROOT, TINY, cli_error, common

ACDC = ["-c", ROOT / "configs/acdc/advmim.yaml", "-c", TINY]
FAST = ["--trainer.fast_dev_run", "1"]


# ----------------------------------------------------------------------------------------
# a. ACDC refuses a num_classes above the classes its labels hold
# ----------------------------------------------------------------------------------------
def test_acdc_refuses_more_classes_than_its_labels_hold(tmp_path):
    root = write_tiny_acdc(tmp_path / "acdc", num_patients=6, size=64)
    words = [*ACDC, *common(tmp_path, "five"), "--data.root", root, *FAST]
    message = cli_error("fit", *words, "--data.labeled_cases", "2", "--data.num_classes", "5")
    assert f"{root}: the labels of the " in message, message
    assert "hold class values up to 3 (the highest in " in message, message
    assert "but num_classes=5; expected num_classes=4." in message, message
    assert not (tmp_path / "runs" / "five" / "checkpoints").exists()
