"""``make demo``: train, test and predict the quickstart config, then show where things went.

Runs ``advmim fit``, ``advmim test`` and ``advmim predict`` on ``configs/quickstart.yaml``
(the built-in phantom, small networks) into ``demo_runs/quickstart/``, writes an overlay PNG
(image | ground truth | CNN | transformer, with a class legend) of a few test slices and prints
the final validation Dice of both networks and the test metrics. Usage::

    advmim demo [--config configs/quickstart.yaml] [--runs_dir demo_runs]

``--overlay_only --overlay PATH`` redraws the overlay from the run's ``last.ckpt`` without
training (how ``docs/demo_overlay.png`` is made, see ``docs/demo.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

#: Column titles of the overlay (the tiles :func:`_overlay_rows` draws).
OVERLAY_TITLES = ("image", "ground truth", "CNN", "transformer")
#: Enlargement of the overlay PNG (96 px phantom slices -> 192 px tiles).
OVERLAY_SCALE = 2


def _overlay_rows(configs: list[str], checkpoint: Path, num_cases: int) -> tuple[list, list[str]]:
    """Middle slices of the first test cases with both networks' predictions, and class names."""
    from advmim_lightning.evaluation.overlays import panel
    from advmim_lightning.method.lightning_module import AdvMIMModule
    from advmim_lightning.run.cli import build_cli

    words = [w for c in configs for w in ("-c", c)]
    with _no_command_line():
        cli = build_cli([*words, "--wandb_mode", "disabled"], run=False)
    datamodule = cli.datamodule
    datamodule.setup("test")
    module = AdvMIMModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    rows = []
    for index in range(min(num_cases, len(datamodule.test_dataset))):
        item = datamodule.test_dataset[index]
        predictions = module.predict_volume(item["image"])  # D x H x W per network
        k = int(item["image"].shape[1]) // 2
        image = item["image"][0, k].numpy()
        rows.append(
            panel(
                image,
                item["label"][k].numpy(),
                {name: predictions[name][k].numpy() for name in ("cnn", "transformer")},
            )
        )
    return rows, list(module.class_names)


def _last_row(path: Path, column: str) -> dict[str, str]:
    """The last CSV row with a value in ``column`` (empty when none or no file)."""
    if not path.is_file():
        return {}
    with path.open() as handle:
        rows = [row for row in csv.DictReader(handle) if row.get(column)]
    return rows[-1] if rows else {}


def _eval_network(run_dir: Path) -> str:
    """The network the run's test metrics come from (``model.eval_network`` of its config)."""
    import yaml

    config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    return str(config.get("model", {}).get("eval_network", "transformer"))


@contextlib.contextmanager
def _no_command_line() -> Iterator[None]:
    """An empty ``sys.argv[1:]`` while the demo calls the CLI with its own words (LightningCLI
    warns when it gets both, and the demo's options are not the subcommand's)."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


def write_overlay(configs: list[str], checkpoint: Path, path: Path, num_cases: int = 4) -> Path:
    """Draw the overlay (image | ground truth | CNN | transformer, legend) to ``path``."""
    from advmim_lightning.evaluation.overlays import save_png

    rows, class_names = _overlay_rows(configs, checkpoint, num_cases)
    return save_png(rows, path, titles=OVERLAY_TITLES, class_names=class_names, scale=OVERLAY_SCALE)


def main(argv: list[str] | None = None) -> None:
    """Run the demo (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="advmim demo", description=__doc__)
    parser.add_argument(
        "--config",
        action="append",
        help="config file(s), composed in order (default: configs/quickstart.yaml)",
    )
    parser.add_argument("--runs_dir", default="demo_runs")
    parser.add_argument("--run_name", default="quickstart")
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help=(
            "intra-op CPU threads (torch.set_num_threads) of every step, whatever "
            "OMP_NUM_THREADS says: CPU results depend on the thread count (default: 2)"
        ),
    )
    parser.add_argument("--overlay_cases", type=int, default=4)
    parser.add_argument(
        "--overlay", help="where to write the overlay PNG (default: <run folder>/overlay.png)"
    )
    parser.add_argument(
        "--overlay_only",
        action="store_true",
        help="only redraw the overlay from the run's checkpoints/last.ckpt (no training)",
    )
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    configs = args.config or ["configs/quickstart.yaml"]
    for config in configs:
        if not Path(config).is_file():
            parser.error(f"config {config} not found; run the demo from the repository root")

    import torch

    from advmim_lightning.run.quiet import quiet_known_noise

    quiet_known_noise()
    # CPU kernels split their sums by thread, so the rounding (and, through the argmax
    # pseudo-labels, the result) depends on the thread count: the demo fixes it.
    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        _run(args, configs, parser)
    finally:
        torch.set_num_threads(previous)


def _run(args: argparse.Namespace, configs: list[str], parser: argparse.ArgumentParser) -> None:
    """The demo's steps, with the thread count already set."""
    import torch

    from advmim_lightning.run.main import main as advmim

    run_dir = Path(args.runs_dir) / args.run_name
    last = run_dir / "checkpoints" / "last.ckpt"
    overlay_path = Path(args.overlay) if args.overlay else run_dir / "overlay.png"
    if args.overlay_only:
        if not last.is_file():
            parser.error(f"--overlay_only needs a finished run: {last} not found")
        print(f"overlay PNG: {write_overlay(configs, last, overlay_path, args.overlay_cases)}")
        return
    if run_dir.exists():
        shutil.rmtree(run_dir)  # the demo always starts a fresh run
    common = [w for c in configs for w in ("-c", c)]
    common += ["--runs_dir", args.runs_dir, "--run_name", args.run_name]
    predictions = run_dir / "predictions"
    steps = [
        ["fit", *common],
        ["test", *common, "--ckpt_path", str(last), "--wandb_mode", "disabled"],
        [
            "predict",
            *common,
            "--ckpt_path",
            str(last),
            "--wandb_mode",
            "disabled",
            "--prediction_writer.output_dir",
            str(predictions),
        ],
    ]
    for words in steps:
        with _no_command_line():
            advmim(words)
    overlay = write_overlay(configs, last, overlay_path, args.overlay_cases)

    summary = _last_row(run_dir / "test_metrics.csv", "dice_mean")
    validation = _last_row(run_dir / "metrics.csv", "val/dice_mean_cnn")
    best = sorted((run_dir / "checkpoints").glob("best-*.ckpt"))
    print("\n=== advmim demo finished ===")
    print(f"checkpoint (last)   : {last}")
    if best:
        print(f"checkpoint (best)   : {best[-1]}")
    print(f"CPU threads         : {torch.get_num_threads()} (--threads)")
    print(f"training metrics    : {run_dir / 'metrics.csv'}")
    print(f"test metrics (CSV)  : {run_dir / 'test_metrics.csv'}")
    print(f"predictions (NIfTI) : {predictions}/ ({len(list(predictions.glob('*.nii.gz')))} files)")
    print(f"overlay PNG         : {overlay}")
    print(f"validation panels   : {run_dir / 'panels'}/")
    print(f"wandb (offline)     : {run_dir / 'wandb'}/  (upload later with `wandb sync`)")
    if validation:
        print(
            "final validation Dice: "
            + ", ".join(
                f"{name} {float(validation[f'val/dice_mean_{name}']):.3f}"
                for name in ("cnn", "transformer")
            )
        )
    if summary:
        keys = ("dice_mean", "hd95_mean", "asd_mean", "nsd_mean")
        print(
            f"test ({_eval_network(run_dir)}), mean over cases: "
            + ", ".join(f"{k}={float(summary[k]):.3f}" for k in keys)
        )


if __name__ == "__main__":  # pragma: no cover
    main()
