"""Memory of ``advmim fit`` at start against the number of NIfTI cases.

Writes generated NIfTI datasets of ``--cases`` cases (``H x W x D`` volumes, default
128 x 128 x 16, float32 in memory: 1 MiB of image per case), then runs a short ``advmim fit``
on each (tiny networks, ``--iterations`` iterations, ``--workers`` data-loader workers) in a
subprocess and samples, every 0.1 s until it ends:

- ``main RSS``: resident memory of the main process (what ``top`` shows);
- ``main anon``: its anonymous (private, unreclaimable) resident memory, i.e. RSS without the
  pages of memory-mapped files, which the kernel can drop and read again;
- ``total PSS``: the proportional set size of the main process and its workers together
  (each shared page counted once), the memory the whole run really holds.

The table gives the peak of each. Three ways of reading the data are compared: ``in RAM``
(no ``data.settings.cache_dir``: every volume is decoded into memory), ``cache (cold)`` (the
first run with a ``cache_dir``, which writes the ``.npy`` cache) and ``cache (warm)`` (later
runs, which memory-map it). Run with ``OMP_NUM_THREADS=1 python benchmarks/memory_scaling.py``
(``--quick`` for a short smoke run).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

from advmim_lightning.data.synthetic import write_tiny_nifti

ROOT = Path(__file__).resolve().parents[1]

TINY_RUN = """
data:
  image_size: [64, 64]
  labeled_batch_size: 2
  unlabeled_batch_size: 2
model:
  mask_block_size: 16
  discriminator_base_channels: 8
  cnn:
    class_path: advmim_lightning.networks.UNet
    init_args:
      channels: [4, 8, 8, 8, 8]
  transformer:
    class_path: advmim_lightning.networks.SwinUNet
    init_args:
      embed_dim: 12
      depths: [1, 1, 1, 1]
      num_heads: [1, 1, 1, 1]
      window_size: 2
      drop_path_rate: 0.0
      pretrained: null  # configs/nifti/advmim.yaml names ImageNet weights (a download)
trainer:
  accelerator: cpu
  enable_progress_bar: false
  enable_model_summary: false
  limit_val_batches: 0
"""


def _anon_kib(pid: int) -> int:
    """``RssAnon`` of ``/proc/<pid>/status`` in KiB (0 when unavailable)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure_fit(words: list[str]) -> dict[str, float]:
    """Peak memory (MiB) of ``advmim fit words`` and of its worker processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    command = [sys.executable, "-m", "advmim_lightning", "fit", *words]
    process = psutil.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    peak = {"main RSS": 0.0, "main anon": 0.0, "total PSS": 0.0}
    while process.poll() is None:
        try:
            rss = process.memory_info().rss
            anon = _anon_kib(process.pid) * 1024
            pss = 0
            for p in [process, *process.children(recursive=True)]:
                try:
                    pss += p.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
        except psutil.NoSuchProcess:
            break
        for key, value in (("main RSS", rss), ("main anon", anon), ("total PSS", pss)):
            peak[key] = max(peak[key], value / 2**20)
        time.sleep(0.1)
    _, stderr = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"advmim fit failed:\n{stderr.decode()[-3000:]}")
    return peak


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, nargs="+", default=[20, 200])
    parser.add_argument("--size", type=int, default=128, help="in-plane size H = W")
    parser.add_argument("--slices", type=int, default=16, help="slices D per volume")
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--quick", action="store_true", help="8 small cases, 2 iterations (a smoke run)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.cases, args.size, args.slices, args.iterations = [8], 32, 4, 2
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="advmim-memory-") as tmp:
        tiny = Path(tmp) / "tiny.yaml"
        tiny.write_text(TINY_RUN)
        for cases in args.cases:
            data = write_tiny_nifti(
                Path(tmp) / f"nifti{cases}",
                num_labeled=max(6, cases // 4),
                num_unlabeled=cases - max(6, cases // 4),
                num_test=0,
                slices=args.slices,
                size=args.size,
            )
            cache = Path(tmp) / f"cache{cases}"
            for mode, extra in (
                ("in RAM", []),
                ("cache (cold)", ["--data.settings.cache_dir", str(cache)]),
                ("cache (warm)", ["--data.settings.cache_dir", str(cache)]),
            ):
                words = [
                    "-c", str(ROOT / "configs/nifti/advmim.yaml"), "-c", str(tiny),
                    "--data.root", str(data), "--data.num_workers", str(args.workers),
                    "--runs_dir", str(Path(tmp) / "runs"), "--run_name", f"{cases}_{len(rows)}",
                    "--wandb_mode", "disabled", "--model.max_iterations", str(args.iterations),
                    *extra,
                ]  # fmt: skip
                peak = measure_fit(words)
                rows.append({"cases": cases, "data": mode, **peak})
    volume_mib = args.size * args.size * args.slices * 4 / 2**20
    print(
        f"# {platform.node()} ({os.cpu_count()} CPUs), torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}; volumes {args.size}x{args.size}x{args.slices} "
        f"({volume_mib:.2f} MiB float32 each), {args.workers} workers, {args.iterations} "
        "iterations; peak MiB"
    )
    print("| cases | data | main RSS | main anon | total PSS |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['cases']} | {r['data']} | {r['main RSS']:.0f} | {r['main anon']:.0f} | "
            f"{r['total PSS']:.0f} |"
        )
    return rows


if __name__ == "__main__":
    main()
