"""SLURM without SLURM: the CLI's trainer reads SLURM's environment, the sbatch example parses,
and a requeued ``--ckpt_path last`` resumes from Lightning's preemption checkpoint."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.trainer.states import TrainerFn

from advmim_lightning.run.cli import build_cli
from advmim_lightning.run.resume import find_run_checkpoint
from tiny import pretend_slurm

ROOT = Path(__file__).resolve().parents[2]
TINY = str(Path(__file__).with_name("tiny.yaml"))
SBATCH = ROOT / "scripts/slurm/advmim.sbatch"


def build_trainer(tmp_path: Path, *extra: str):
    words = [
        "-c", str(ROOT / "configs/quickstart.yaml"), "-c", TINY,
        "--runs_dir", str(tmp_path), "--run_name", "slurm", "--wandb_mode", "disabled", *extra,
    ]  # fmt: skip
    return build_cli(words, run=False).trainer


def test_the_cli_trainer_takes_ranks_and_nodes_from_slurm(tmp_path, monkeypatch):
    # rank 3 of 4: the second task on the second of two nodes gpu07, gpu08
    pretend_slurm(
        monkeypatch, SLURM_NTASKS="4", SLURM_NTASKS_PER_NODE="2", SLURM_NNODES="2",
        SLURM_PROCID="3", SLURM_LOCALID="1", SLURM_NODEID="1",
        SLURM_JOB_NODELIST="gpu[07-08]", SLURM_NODELIST="gpu[07-08]",
    )  # fmt: skip
    trainer = build_trainer(
        tmp_path,
        "--trainer.num_nodes", "2", "--trainer.devices", "2",
        "--trainer.strategy", "ddp_find_unused_parameters_true",
    )  # fmt: skip
    environment = trainer.strategy.cluster_environment
    assert isinstance(environment, SLURMEnvironment)
    assert (trainer.global_rank, trainer.local_rank, trainer.node_rank) == (3, 1, 1)
    assert trainer.world_size == 4 and trainer.num_nodes == 2
    assert not trainer.is_global_zero  # checkpoints and logs are rank 0's
    assert environment.main_address == "gpu07"
    assert environment.creates_processes_externally  # srun started the processes, not Lightning


def test_the_sbatch_example_parses_and_runs_advmim_fit_under_srun():
    done = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = SBATCH.read_text()
    for needed in ("#SBATCH --requeue", "#SBATCH --signal=SIGUSR1@", "srun advmim fit"):
        assert needed in text
    assert "--ckpt_path last" in text and "configs/trainer/multinode.yaml" in text
    assert (ROOT / "configs/trainer/multinode.yaml").is_file()


def test_ckpt_path_last_takes_a_newer_slurm_requeue_checkpoint(tmp_path):
    trainer = build_trainer(tmp_path)
    run_dir = tmp_path / "slurm"
    last = run_dir / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"older")
    hpc = run_dir / "hpc_ckpt_1.ckpt"  # what Lightning saves on SLURM's SIGUSR1
    hpc.write_bytes(b"newer")
    os.utime(last, (time.time() - 60, time.time() - 60))

    def resolve_last() -> str:
        connector = trainer._checkpoint_connector
        return connector._parse_ckpt_path(TrainerFn.FITTING, "last", True, True)

    def resolve_last_in_the_cli() -> Path | None:
        return find_run_checkpoint("fit", "last", tmp_path, "slurm")

    assert resolve_last() == str(hpc)
    assert resolve_last_in_the_cli() == hpc
    os.utime(hpc, (time.time() - 120, time.time() - 120))  # a later last.ckpt wins again
    assert resolve_last() == str(last)
    assert resolve_last_in_the_cli() == last
