"""Tiny networks and batches so module tests run in milliseconds (tests/ is on sys.path)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from safetensors.torch import save_file
from timm.models.swin_transformer import SwinTransformer
from torch.utils.data import DataLoader, Dataset

from advmim_lightning import AdvMIMModule
from advmim_lightning.networks import SwinUNet, UNet

TINY_SIZE = 64
TINY_CLASSES = 4


def tiny_unet(num_classes: int = TINY_CLASSES, in_channels: int = 1) -> UNet:
    """A UNet with 4-8 channels: the real architecture at a toy width."""
    return UNet(in_channels=in_channels, num_classes=num_classes, channels=(4, 8, 8, 8, 8))


def tiny_swin(
    num_classes: int = TINY_CLASSES, img_size: int = TINY_SIZE, in_channels: int = 1
) -> SwinUNet:
    """A Swin-UNet with one block per stage, 12-dim embedding and 2x2 windows."""
    return SwinUNet(
        num_classes=num_classes,
        img_size=img_size,
        in_channels=in_channels,
        embed_dim=12,
        depths=(1, 1, 1, 1),
        num_heads=(1, 1, 1, 1),
        window_size=2,
        drop_path_rate=0.0,
    )


def tiny_batch(
    n_labeled: int = 2, n_unlabeled: int = 2, size: int = TINY_SIZE, seed: int = 0
) -> dict:
    """A paired training batch of random images with blob labels."""
    gen = torch.Generator().manual_seed(seed)
    x_l = torch.rand(n_labeled, 1, size, size, generator=gen)
    label = (x_l[:, 0] * TINY_CLASSES).long().clamp_max(TINY_CLASSES - 1)
    return {
        "labeled": {
            "image": x_l,
            "label": label,
            "case_id": [f"case{i}" for i in range(n_labeled)],
        },
        "unlabeled": {
            "image": torch.rand(n_unlabeled, 1, size, size, generator=gen),
            "case_id": [f"u{i}" for i in range(n_unlabeled)],
        },
    }


def full_state(module: pl.LightningModule) -> dict[str, torch.Tensor]:
    """Copies of a module's state dict and of every SGD momentum buffer its trainer holds.

    The state dict's ``iteration`` entry (a counter, not trained state) is left out.
    """
    state = {k: v.detach().clone() for k, v in module.state_dict().items() if k != "iteration"}
    for i, opt in enumerate(module.trainer.optimizers):
        for j, param in enumerate(opt.param_groups[0]["params"]):
            if "momentum_buffer" in opt.state[param]:
                state[f"opt{i}.momentum{j}"] = opt.state[param]["momentum_buffer"].clone()
    return state


class StateSnapshots(pl.Callback):
    """Records :func:`full_state` as ``before<i>`` / ``after<i>`` around training batch ``i``."""

    def __init__(self) -> None:
        self.states: dict[str, dict[str, torch.Tensor]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.states[f"before{batch_idx}"] = full_state(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.states[f"after{batch_idx}"] = full_state(pl_module)


def timm_swin_state(
    embed_dim: int = 12,
    depths: tuple[int, ...] = (1, 1, 2, 1),
    num_heads: tuple[int, ...] = (1, 1, 1, 1),
    window_size: int = 2,
    img_size: int = TINY_SIZE,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A small timm Swin's state dict (timm's key format, as the Hub stores Swin-T). Stage 2 has
    one block more than :func:`tiny_swin`, as Swin-T's depth-6 stage against the lite model."""
    torch.manual_seed(seed)
    model = SwinTransformer(
        img_size=img_size,
        patch_size=4,
        in_chans=3,
        num_classes=5,
        embed_dim=embed_dim,
        depths=depths,
        num_heads=num_heads,
        window_size=window_size,
    )
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


HF_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def write_hf_cache(
    cache: Path, repo_id: str, state: dict[str, torch.Tensor], filename: str = "model.safetensors"
) -> Path:
    """Write ``state`` where huggingface_hub looks for ``repo_id``'s ``filename`` in ``cache``:
    ``models--<org>--<name>/refs/main`` holding a commit hash and
    ``snapshots/<hash>/<filename>`` (safetensors, or ``torch.save`` for ``.bin``)."""
    folder = Path(cache) / f"models--{repo_id.replace('/', '--')}"
    snapshot = folder / "snapshots" / HF_COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(HF_COMMIT)
    path = snapshot / filename
    if filename.endswith(".safetensors"):
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def cli_error(*words: object) -> str:
    """Run the ``advmim`` command line expecting a clean one-line error; return its message."""
    from advmim_lightning.run.main import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(w) for w in words])
    message = str(exit_info.value.code)
    assert message.startswith("advmim: error: ") and "ADVMIM_DEBUG=1" in message, message
    return message


def assert_same_training_state(got: dict, expected: dict) -> None:
    """Weights, buffers and all SGD momenta of two checkpoints are bitwise equal."""
    assert got["state_dict"].keys() == expected["state_dict"].keys()
    for key, value in expected["state_dict"].items():
        assert torch.equal(got["state_dict"][key], value), key
    for a, b in zip(expected["optimizer_states"], got["optimizer_states"], strict=True):
        assert a["state"].keys() == b["state"].keys()
        for index, state in a["state"].items():
            assert torch.equal(state["momentum_buffer"], b["state"][index]["momentum_buffer"])


# ---------------------------------------------------------------- a tiny module, fitted by hand
def make_module(method: str = "advmim", **kwargs) -> AdvMIMModule:
    """An ``AdvMIMModule`` of tiny networks (10 iterations unless ``max_iterations`` is given)."""
    return AdvMIMModule(
        cnn=tiny_unet(),
        transformer=tiny_swin(),
        image_size=(TINY_SIZE, TINY_SIZE),
        method=method,
        max_iterations=kwargs.pop("max_iterations", 10),
        **kwargs,
    )


class PairedBatches(Dataset):
    """A map-style dataset of whole paired batches (batch_size=None loader)."""

    def __init__(self, n: int, labeled_only: bool = False) -> None:
        self.n, self.labeled_only = n, labeled_only

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        batch = tiny_batch(seed=i)
        if self.labeled_only:
            del batch["unlabeled"]
        return batch


def fit(
    module: AdvMIMModule,
    n_batches: int = 0,
    labeled_only: bool = False,
    dataset: Dataset | None = None,
    **trainer_kwargs,
):
    """Fit on ``dataset`` (whole batches; default ``n_batches`` random ones) for one epoch.

    ``trainer_kwargs`` override the quiet defaults below (no logger, no checkpoints unless
    callbacks are given, no validation, logging every iteration).
    """
    settings = {
        "accelerator": "cpu",
        "max_epochs": 1,
        "logger": False,
        "enable_checkpointing": bool(trainer_kwargs.get("callbacks")),
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
        "log_every_n_steps": 1,
    }
    trainer = pl.Trainer(**{**settings, **trainer_kwargs})
    if dataset is None:
        dataset = PairedBatches(n_batches, labeled_only)
    trainer.fit(module, train_dataloaders=DataLoader(dataset, batch_size=None))
    return trainer


class Volumes(Dataset):
    """Eval items as the DataModule yields them: one whole case per item."""

    def __init__(self, n: int = 2, depth: int = 3, size: int = 40) -> None:
        self.n, self.depth, self.size = n, depth, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        gen = torch.Generator().manual_seed(100 + i)
        label = torch.zeros(self.depth, self.size, self.size, dtype=torch.long)
        label[:, 10:30, 10:30] = 1
        label[:, 15:25, 15:25] = 3
        image = label.float().unsqueeze(0) / 3 + 0.1 * torch.rand(
            1, self.depth, self.size, self.size, generator=gen
        )
        return {
            "image": image,
            "label": label,
            "case_id": f"vol{i}",
            "case_index": i,
            "spacing": (5.0, 1.5, 1.5),
            "spacing_known": True,
            "affine": torch.diag(torch.tensor([1.5, 1.5, 5.0, 1.0], dtype=torch.float64)),
            "slice_axis": 2,
            "source": f"memory:vol{i}",
        }


def first_item(items: list) -> dict:
    """``collate_fn`` of a batch-size-1 loader of whole cases: the case itself."""
    return items[0]


class PoisonedAt(PairedBatches):
    """Paired batches whose batch ``at`` overflows: intensities beyond any float range."""

    def __init__(self, n: int, at: set[int]) -> None:
        super().__init__(n)
        self.at = at

    def __getitem__(self, i: int) -> dict:
        batch = super().__getitem__(i)
        if i in self.at:
            batch["unlabeled"]["image"][0] = 3e38  # conv sums overflow to inf, then NaN
        return batch


def pretend_slurm(monkeypatch: pytest.MonkeyPatch, **variables: str) -> None:
    """Make this process look like a SLURM task (job 4242 on gpu07 unless ``variables`` say
    otherwise), with ``MASTER_ADDR`` / ``MASTER_PORT`` removed again after the test (Lightning
    sets them) and the rank-zero flags restored (DDP sets them)."""
    import lightning_utilities.core.rank_zero as utils_rank_zero
    from lightning.pytorch.utilities import rank_zero

    slurm = {
        "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "1",
        "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
        "SLURM_JOB_NODELIST": "gpu07", "SLURM_NODELIST": "gpu07",
        "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "advmim",
    }  # fmt: skip
    for name, value in {**slurm, **variables}.items():
        monkeypatch.setenv(name, value)
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(name, "unset")
        monkeypatch.delenv(name)
    for holder in (rank_zero.rank_zero_only, utils_rank_zero.rank_zero_only):
        monkeypatch.setattr(holder, "rank", getattr(holder, "rank", 0))


def sigkill_once_checkpointed(command: list[str], last: Path) -> None:
    """Run ``command`` (an ``advmim fit``, 1 thread) and SIGKILL it, its data-loader workers
    included, as soon as ``last`` (its ``last.ckpt``) exists."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, start_new_session=True)
    deadline = time.monotonic() + 300
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the trainer and its data-loader workers
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
