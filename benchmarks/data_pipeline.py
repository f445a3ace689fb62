"""Throughput of the training data pipeline: augmented images per second per worker.

Measures, in one process limited to one thread (what a DataLoader worker gets):

1. the augmentation alone (SSL4MIS-equivalent rot90/flip/rotate + resize to 224 x 224) on
   ACDC-sized (256 x 216) and phantom-sized (128 x 128) slices, for nearest and bilinear
   image resizing;
2. whole paired training batches (8 labeled + 8 unlabeled) from the data module's dataset,
   as a worker builds them (slice lookup, augmentation, stacking);
3. the time to generate the default phantom (40 cases x 8 slices x 128 x 128).

Run with ``OMP_NUM_THREADS=1 python benchmarks/data_pipeline.py`` (``--quick`` for a short
run). A GPU step of the public AdvMIM code takes about 285 ms for a batch of 16 images on an
H100 (docs/method.md), i.e. it consumes about 56 images/s; each worker should deliver several times
that.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from advmim_lightning.data import AdvMIMDataModule, PhantomSettings
from advmim_lightning.data.phantom import generate_phantom
from advmim_lightning.data.transforms import SliceAugmenter


def _rate(fn, count: int) -> float:
    fn(0)  # warm-up (index caches)
    start = time.perf_counter()
    for i in range(1, count + 1):
        fn(i)
    return count / (time.perf_counter() - start)


def augmentation_rates(count: int) -> list[tuple[str, float]]:
    rows = []
    for height, width in ((256, 216), (128, 128)):
        image = torch.rand(1, height, width)
        label = torch.randint(0, 4, (height, width), dtype=torch.uint8)
        for interpolation in ("nearest", "bilinear"):
            aug = SliceAugmenter((224, 224), image_interpolation=interpolation)

            def step(i: int, aug=aug, image=image, label=label) -> None:
                aug(image, label, aug.params(0, 0, i))

            name = f"augment {height}x{width} -> 224x224, {interpolation} image"
            rows.append((name, _rate(step, count)))
    return rows


def batch_rate(count: int) -> tuple[str, float]:
    dm = AdvMIMDataModule(num_workers=0, phantom=PhantomSettings(cases=40))  # the default demo set
    dm.setup("fit")
    loader = dm.train_dataloader()
    dataset, sampler = loader.dataset, loader.sampler
    plans = [sampler.plan(i) for i in range(count + 1)]
    images_per_batch = dm.labeled_batch_size + dm.unlabeled_batch_size

    def step(i: int) -> None:
        dataset[plans[i]]

    name = f"paired batch {dm.labeled_batch_size}+{dm.unlabeled_batch_size} (phantom 128 -> 224)"
    return name, _rate(step, count) * images_per_batch


def loader_rate(batches: int, warmup: int = 5) -> tuple[str, float]:
    """Images per second out of the training DataLoader as ``fit`` builds it: the default
    data module (phantom, 8 + 8 at 224 x 224) with its default worker count."""
    dm = AdvMIMDataModule(phantom=PhantomSettings(cases=40), iterations_per_epoch=warmup + batches)
    dm.setup("fit")
    loader = iter(dm.train_dataloader())
    for _ in range(warmup):  # workers start, first batches are prefetched
        next(loader)
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    rate = batches * (dm.labeled_batch_size + dm.unlabeled_batch_size)
    name = f"training DataLoader, default {dm.num_workers} workers (images/s in all)"
    return name, rate / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument(
        "--loader",
        action="store_true",
        help="only the training DataLoader with the default workers (what a GPU run is fed)",
    )
    args = parser.parse_args()
    if args.loader:
        name, rate = loader_rate(100 if args.quick else 300)
        print(f"{name}: {rate:.0f}")
        return
    torch.set_num_threads(1)
    count = 200 if args.quick else 1000
    start = time.perf_counter()
    generate_phantom(40, 8, 128)
    phantom_s = time.perf_counter() - start
    rows = augmentation_rates(count)
    rows.append(batch_rate(max(count // 16, 10)))
    print(
        f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, 1 torch thread"
    )
    print(f"{'pipeline':<58} {'images/s per worker':>20}")
    print("-" * 79)
    for name, rate in rows:
        print(f"{name:<58} {rate:>20.0f}")
    print(f"\ndefault phantom (40 cases x 8 slices x 128x128) generated in {phantom_s:.2f} s")


if __name__ == "__main__":
    main()
