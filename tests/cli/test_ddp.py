"""Real multi-process DDP fits on the CPU (gloo) through the console script: 2 processes on one
node, 2 ``torchrun`` nodes of 1 process each, and resuming on another number of processes."""

from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from advmim_lightning.run.main import main
from tiny import assert_same_training_state

ROOT = Path(__file__).resolve().parents[2]
TINY = Path(__file__).with_name("tiny.yaml")
BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
DDP = ("--trainer.strategy", "ddp_find_unused_parameters_true")


def fit_words(runs_dir: Path, name: str, *extra: str) -> list[str]:
    """``advmim fit`` arguments of the tiny 3-iteration run ``runs_dir/name``."""
    return [
        "fit", "-c", str(ROOT / "configs/quickstart.yaml"), "-c", str(TINY),
        "--runs_dir", str(runs_dir), "--run_name", name, "--wandb_mode", "disabled",
        "--model.max_iterations", "3", "--trainer.val_check_interval", "3", *extra,
    ]  # fmt: skip


def last_checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.fixture(scope="module")
def one_node_run(tmp_path_factory) -> Path:
    """The folder of a 2-process fit on one node (Lightning launches the second process)."""
    runs_dir = tmp_path_factory.mktemp("one_node")
    command = [str(BIN / "advmim"), *fit_words(runs_dir, "ddp", *DDP, "--trainer.devices", "2")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=400, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    return runs_dir / "ddp"


def test_two_process_ddp_fit_writes_one_run_folder(one_node_run):
    assert sorted(p.name for p in (one_node_run / "checkpoints").iterdir())[-1] == "last.ckpt"
    assert last_checkpoint(one_node_run)["state_dict"]["iteration"] == 3
    rows = list(csv.DictReader((one_node_run / "metrics.csv").open()))
    assert any(r.get("val/dice_mean") for r in rows)
    assert len([r for r in rows if r.get("train/loss")]) == 3  # rank 0 logs, once per iteration


def test_two_torchrun_nodes_train_the_same_weights_as_one_node(one_node_run, tmp_path):
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    words = fit_words(tmp_path, "nodes", *DDP, "--trainer.num_nodes", "2", "--trainer.devices", "1")
    torchrun = [
        str(BIN / "torchrun"), "--nnodes", "2", "--nproc_per_node", "1",
        "--master_addr", "127.0.0.1", "--master_port", str(port),
    ]  # fmt: skip
    nodes = [
        subprocess.Popen(
            [*torchrun, "--node_rank", str(node), str(BIN / "advmim"), *words],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=ENV,
        )
        for node in (0, 1)
    ]
    try:
        outputs = [node.communicate(timeout=400)[0] for node in nodes]
    finally:  # a node left waiting for a failed peer is stopped (torchrun stops its worker)
        for node in nodes:
            if node.poll() is None:
                node.terminate()
    for node, output in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, output[-3000:]
    assert "GLOBAL_RANK: 1" in outputs[1]  # node 1 ran the second rank
    nodes_state = last_checkpoint(tmp_path / "nodes")
    assert nodes_state["state_dict"]["iteration"] == 3
    assert_same_training_state(nodes_state, last_checkpoint(one_node_run))


def test_resuming_on_another_number_of_processes_is_refused(one_node_run, tmp_path):
    shutil.copytree(one_node_run, tmp_path / "ddp")  # saved by 2 processes, resumed by 1
    one = ("--trainer.strategy", "auto", "--trainer.devices", "1")
    longer = ("--model.max_iterations", "4", "--ckpt_path", "last")
    with pytest.raises(SystemExit) as refused:
        main(fit_words(tmp_path, "ddp", *one, *longer))
    message = str(refused.value.code)
    assert "saved by a run with 2 process(es) and this run has 1" in message
    assert "--trainer.devices 2" in message
    assert last_checkpoint(tmp_path / "ddp")["state_dict"]["iteration"] == 3  # nothing trained

    main(fit_words(tmp_path, "single", *one))  # 1 process, resumed by 2
    resumed = fit_words(tmp_path, "single", *DDP, "--trainer.devices", "2", *longer)
    done = subprocess.run(
        [str(BIN / "advmim"), *resumed],
        capture_output=True,
        text=True,
        timeout=400,
        env=ENV,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert "saved by a run with 1 process(es) and this run has 2" in done.stderr
    assert last_checkpoint(tmp_path / "single")["state_dict"]["iteration"] == 3


def test_skip_mode_skips_an_iteration_on_every_rank_when_one_rank_overflows(tmp_path):
    script = Path(__file__).with_name("ddp_skip_run.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for states in ranks:
        assert int(states["skipped"]) == 1
        for key, value in states["before1"].items():  # iteration 1 changed nothing
            assert torch.equal(states["after1"][key], value), key
        assert not torch.equal(
            states["after2"]["cnn.head.weight"], states["before2"]["cnn.head.weight"]
        )
    # parameters and momenta stay identical across ranks (batch-norm running statistics are
    # per rank under DDP: each rank's masks differ)
    for key, value in ranks[0]["after2"].items():
        if "running_" not in key and "num_batches_tracked" not in key:
            assert torch.equal(ranks[1]["after2"][key], value), key
