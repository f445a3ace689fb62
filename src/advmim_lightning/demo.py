"""``make demo``: train, test and predict the quickstart config, then show where things went.

Runs ``advmim fit``, ``advmim test`` and ``advmim predict`` on ``configs/quickstart.yaml``
(the built-in phantom, small networks) into ``demo_runs/quickstart/`` and writes an overlay
PNG (image | ground truth | prediction) of a few test slices. Usage::

    python -m advmim_lightning.demo [--config configs/quickstart.yaml] [--runs_dir demo_runs]
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

import numpy as np


def _overlay_rows(configs: list[str], predictions: Path, num_cases: int) -> list:
    import nibabel as nib

    from advmim_lightning.main import build_cli
    from advmim_lightning.visualize import panel

    words = [w for c in configs for w in ("-c", c)]
    cli = build_cli([*words, "--wandb_mode", "disabled"], run=False)
    datamodule = cli.datamodule
    datamodule.setup("test")
    rows = []
    for index in range(min(num_cases, len(datamodule.test_dataset))):
        item = datamodule.test_dataset[index]
        path = predictions / f"{item['case_id']}.nii.gz"
        if not path.is_file():
            raise FileNotFoundError(f"the prediction of {item['case_id']} is missing: {path}")
        stored = np.asarray(nib.load(path).dataobj)
        prediction = np.moveaxis(stored, int(item["slice_axis"]), 0)  # back to D x H x W
        k = prediction.shape[0] // 2
        image = item["image"][0, k].numpy()
        rows.append(panel(image, item["label"][k].numpy(), {"prediction": prediction[k]}))
    return rows


def _test_summary(path: Path) -> dict[str, str]:
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    return rows[-1] if rows else {}


def main(argv: list[str] | None = None) -> None:
    """Run the demo (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m advmim_lightning.demo", description=__doc__)
    parser.add_argument(
        "--config",
        action="append",
        help="config file(s), composed in order (default: configs/quickstart.yaml)",
    )
    parser.add_argument("--runs_dir", default="demo_runs")
    parser.add_argument("--run_name", default="quickstart")
    parser.add_argument("--overlay_cases", type=int, default=4)
    args = parser.parse_args(argv)
    configs = args.config or ["configs/quickstart.yaml"]
    for config in configs:
        if not Path(config).is_file():
            parser.error(f"config {config} not found; run the demo from the repository root")

    from advmim_lightning.main import main as advmim
    from advmim_lightning.visualize import save_png

    run_dir = Path(args.runs_dir) / args.run_name
    if run_dir.exists():
        shutil.rmtree(run_dir)  # the demo always starts a fresh run
    common = [w for c in configs for w in ("-c", c)]
    common += ["--runs_dir", args.runs_dir, "--run_name", args.run_name]
    advmim(["fit", *common])
    last = run_dir / "checkpoints" / "last.ckpt"
    advmim(["test", *common, "--ckpt_path", str(last), "--wandb_mode", "disabled"])
    predictions = run_dir / "predictions"
    advmim(
        [
            "predict",
            *common,
            "--ckpt_path",
            str(last),
            "--wandb_mode",
            "disabled",
            "--prediction_writer.output_dir",
            str(predictions),
        ]
    )
    overlay = save_png(
        _overlay_rows(configs, predictions, args.overlay_cases), run_dir / "overlay.png"
    )

    summary = _test_summary(run_dir / "test_metrics.csv")
    best = sorted((run_dir / "checkpoints").glob("best-*.ckpt"))
    print("\n=== advmim demo finished ===")
    print(f"checkpoint (last)   : {last}")
    if best:
        print(f"checkpoint (best)   : {best[-1]}")
    print(f"training metrics    : {run_dir / 'metrics.csv'}")
    print(f"test metrics (CSV)  : {run_dir / 'test_metrics.csv'}")
    print(f"predictions (NIfTI) : {predictions}/ ({len(list(predictions.glob('*.nii.gz')))} files)")
    print(f"overlay PNG         : {overlay}")
    print(f"validation panels   : {run_dir / 'panels'}/")
    print(f"wandb (offline)     : {run_dir / 'wandb'}/  (upload later with `wandb sync`)")
    if summary:
        keys = ("dice_mean", "hd95_mean", "asd_mean", "nsd_mean")
        print("test, mean over cases: " + ", ".join(f"{k}={float(summary[k]):.3f}" for k in keys))


if __name__ == "__main__":  # pragma: no cover
    main()
