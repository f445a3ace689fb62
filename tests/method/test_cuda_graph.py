"""``cuda_graph=True``: the static-buffer step function, checked on the CPU without capture.

On a CPU the option refuses to train. The tests below lift that refusal and run the step
function eagerly every iteration (``GraphedIteration(capture=False)``, what a CUDA run does in
its warm-up iterations), so everything but the capture itself is checked here: the same losses
and updates as the eager ``training_step``, the optimiser steps counted, checkpoints and
resume, logging, non-finite checks. The capture and replay are checked on a GPU by
``tests/gpu/test_cuda_graph_gpu.py`` (run by ``benchmarks/gpu_run.sh``).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import Dataset

from advmim_lightning.method import contracts, cuda_graph
from advmim_lightning.method.cuda_graph import GraphedIteration, sgd_update
from advmim_lightning.run.main import main
from tiny import assert_same_training_state, cli_error, fit, full_state, make_module, tiny_batch

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "tests/cli/tiny.yaml")
QUICKSTART = str(ROOT / "configs/quickstart.yaml")


@pytest.fixture
def graph_on_cpu(monkeypatch):
    """Let ``cuda_graph=True`` train on the CPU: the step function without capture."""
    monkeypatch.setattr(contracts, "check_cuda_graph_trainer", lambda trainer: None)


def test_cuda_graph_is_refused_on_a_cpu_naming_the_device_and_the_fix(tmp_path):
    message = cli_error(
        "fit", "-c", QUICKSTART, "-c", TINY, "--runs_dir", tmp_path, "--wandb_mode", "disabled",
        "--model.max_iterations", "1", "--model.cuda_graph", "true",
    )  # fmt: skip
    assert "model.cuda_graph=true" in message
    assert "needs a CUDA GPU" in message and "trains on 'cpu'" in message
    assert "model.cuda_graph=false" in message


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune"])
def test_cuda_graph_refuses_compile_modes_that_capture_graphs_of_their_own(mode):
    with pytest.raises(ValueError, match=f"compile_networks='{mode}' captures CUDA graphs"):
        make_module(cuda_graph=True, compile_networks=mode)
    make_module(cuda_graph=True, compile_networks="default")  # this one combines


@pytest.fixture
def descend_as_pytorch(monkeypatch):
    """SGD's last line exactly as ``torch.optim.SGD`` rounds it (``p.add_(buf, alpha=-lr)``).

    The graph's ``p -= lr * buf`` (a device learning rate) rounds ``lr * buf`` first, so it can
    differ in the last bit, and AdvMIM's argmax pseudo-labels turn such bits into visibly
    different weights after a few iterations. With PyTorch's rounding the static step must
    match the eager one bit for bit; ``sgd_update`` itself is checked against SGD below.
    """

    def descend(params, steps, lr):
        for param, step in zip(params, steps, strict=True):
            param.add_(step, alpha=-float(lr))

    monkeypatch.setattr(cuda_graph, "_descend", descend)


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("advmim", {}),
        ("advmim", {"forward_batching": "joint", "nonfinite_check": "skip"}),
        ("ctct", {}),
        ("supervised", {}),
    ],
)
def test_the_static_step_function_trains_like_the_eager_training_step(
    graph_on_cpu, descend_as_pytorch, method, options
):
    labeled_only = method == "supervised"
    torch.manual_seed(0)
    eager = make_module(method, **options)
    torch.manual_seed(0)
    graphed = make_module(method, cuda_graph=True, **options)
    eager_trainer = fit(eager, 4, labeled_only=labeled_only)
    graphed_trainer = fit(graphed, 4, labeled_only=labeled_only)

    assert isinstance(graphed._graphed, GraphedIteration)
    assert graphed._graphed.graph is None and graphed._graphed.eager_iterations == 4
    # every optimiser step is counted as Lightning counts it
    assert graphed_trainer.global_step == eager_trainer.global_step
    assert graphed_trainer.global_step == 4 * graphed.optimizer_steps_per_iteration
    assert graphed.iteration == eager.iteration == 4
    expected, got = full_state(eager), full_state(graphed)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    logged = graphed_trainer.logged_metrics
    assert set(logged) == set(eager_trainer.logged_metrics)
    for key, value in eager_trainer.logged_metrics.items():
        assert torch.equal(logged[key], value), key


def test_one_static_step_with_the_graphs_own_update_matches_up_to_rounding(graph_on_cpu):
    torch.manual_seed(0)
    eager = make_module()
    torch.manual_seed(0)
    graphed = make_module(cuda_graph=True)
    fit(eager, 1)
    fit(graphed, 1)
    expected, got = full_state(eager), full_state(graphed)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-7, msg=key)


def test_sgd_update_is_pytorchs_sgd_with_a_device_learning_rate():
    torch.manual_seed(0)
    params = [torch.randn(5, 3), torch.randn(7), torch.randn(2, 2)]
    ours = [p.clone().requires_grad_() for p in params]
    theirs = [p.clone().requires_grad_() for p in params]
    settings = {"momentum": 0.9, "weight_decay": 1e-4}
    our_opt = torch.optim.SGD(ours, lr=0.05, **settings)
    their_opt = torch.optim.SGD(theirs, lr=0.05, foreach=True, **settings)
    for step, lr in enumerate([0.05, 0.04, 0.03]):
        grads = [torch.randn_like(p) for p in params]
        for p, q, g in zip(ours, theirs, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        ours[2].grad = theirs[2].grad = None if step == 1 else ours[2].grad  # a skipped param
        for group in their_opt.param_groups:
            group["lr"] = lr
        sgd_update(our_opt, torch.tensor(lr))
        their_opt.step()
        for p, q in zip(ours, theirs, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(
                our_opt.state[p]["momentum_buffer"], their_opt.state[q]["momentum_buffer"]
            )
    nesterov = torch.optim.SGD(ours, lr=0.1, momentum=0.9, nesterov=True)
    with pytest.raises(ValueError, match="nesterov=True"):
        sgd_update(nesterov, torch.tensor(0.1))


class ShrinkingBatches(Dataset):
    """Two full paired batches, then a smaller one (a custom loader's last batch)."""

    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int) -> dict:
        return tiny_batch(n_labeled=2 if i < 2 else 1, seed=i)


def test_a_batch_of_another_shape_is_refused_naming_both_shapes(graph_on_cpu):
    module = make_module(cuda_graph=True)
    with pytest.raises(ValueError) as error:
        fit(module, dataset=ShrinkingBatches())
    message = str(error.value)
    assert "cuda_graph replays the first batch's shapes" in message
    assert "x_l is (1, 1, 64, 64)" in message and "first batch had (2, 1, 64, 64)" in message
    assert "model.cuda_graph=false" in message


def test_auto_takes_the_graph_on_one_gpu_and_trains_another_shape_eagerly(monkeypatch):
    """``cuda_graph=None`` (the default): the graph where it fits; a smaller last batch then
    trains eagerly instead of being refused, as the eager step would train it."""
    monkeypatch.setattr(contracts, "cuda_graph_fits", lambda trainer, compile_, networks: True)
    torch.manual_seed(0)
    eager = make_module(cuda_graph=False)
    torch.manual_seed(0)
    auto = make_module()
    assert auto.hparams.cuda_graph is None
    fit(eager, dataset=ShrinkingBatches())
    fit(auto, dataset=ShrinkingBatches())
    assert isinstance(auto._graphed, GraphedIteration) and eager._graphed is None
    assert auto._graphed.eager_iterations == 2  # the third batch did not go to the graph
    assert auto.iteration == eager.iteration == 3
    expected, got = full_state(eager), full_state(auto)
    for key, value in expected.items():  # the graph's own SGD update: equal up to rounding
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_auto_stays_eager_on_a_cpu():
    module = make_module()
    fit(module, 1)
    assert module._graphed is None and not module._graph_fit


def test_auto_leaves_a_users_network_eager(monkeypatch):
    """A network of the user's may read values back to the host: auto never captures it."""
    module = make_module()
    trainer = SimpleNamespace(
        strategy=SimpleNamespace(root_device=torch.device("cuda")),
        world_size=1,
        precision_plugin=None,
    )
    assert contracts.cuda_graph_fits(trainer, None, module.model.segmenters)
    users = {**module.model.segmenters, "cnn": torch.nn.Conv2d(1, 4, 3)}
    assert not contracts.cuda_graph_fits(trainer, None, users)
    assert not contracts.cuda_graph_fits(trainer, "reduce-overhead", module.model.segmenters)
    trainer.world_size = 2
    assert not contracts.cuda_graph_fits(trainer, None, module.model.segmenters)


def run_cli_fit(tmp_path: Path, name: str, *extra: str) -> Path:
    main(
        [
            "fit", "-c", QUICKSTART, "-c", TINY, "--runs_dir", str(tmp_path), "--run_name", name,
            "--wandb_mode", "disabled", "--model.max_iterations", "5",
            "--trainer.limit_val_batches", "0", "--model.cuda_graph", "true", *extra,
        ]
    )  # fmt: skip
    return tmp_path / name / "checkpoints" / "last.ckpt"


def test_an_interrupted_static_step_run_resumes_bitwise(graph_on_cpu, tmp_path):
    straight = torch.load(run_cli_fit(tmp_path, "straight"), weights_only=True)
    # max_steps stops after 2 iterations only if the graph's optimiser steps are counted
    run_cli_fit(tmp_path, "resumed", "--trainer.max_steps", "8")
    first_part = torch.load(tmp_path / "resumed/checkpoints/last.ckpt", weights_only=True)
    assert first_part["state_dict"]["iteration"] == 2
    assert first_part["global_step"] == 8
    resumed = torch.load(run_cli_fit(tmp_path, "resumed", "--ckpt_path", "last"), weights_only=True)
    assert resumed["state_dict"]["iteration"] == straight["state_dict"]["iteration"] == 5
    assert_same_training_state(resumed, straight)


def test_an_eager_run_resumed_with_the_graph_continues_it_exactly(
    graph_on_cpu, descend_as_pytorch, tmp_path
):
    # cuda_graph is a speed option: it may be switched on when resuming an eager run
    eager = ["--model.cuda_graph", "false"]
    straight = torch.load(run_cli_fit(tmp_path, "straight", *eager), weights_only=True)
    run_cli_fit(tmp_path, "resumed", *eager, "--trainer.max_steps", "8")
    resumed = torch.load(run_cli_fit(tmp_path, "resumed", "--ckpt_path", "last"), weights_only=True)
    assert resumed["hyper_parameters"]["cuda_graph"] is True
    assert straight["hyper_parameters"]["cuda_graph"] is False
    assert_same_training_state(resumed, straight)


def test_a_nonfinite_loss_is_reported_as_without_the_graph(graph_on_cpu):
    class NanBatches(Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int) -> dict:
            batch = tiny_batch(seed=i)
            batch["labeled"]["image"][0, 0, 0, 0] = float("nan")
            return batch

    module = make_module(cuda_graph=True)
    with pytest.raises(FloatingPointError, match=r"non-finite loss in iterations 0\.\.0"):
        fit(module, dataset=NanBatches())
