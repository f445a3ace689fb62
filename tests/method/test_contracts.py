"""Tests for advmim_lightning.method.contracts: what AdvMIMModule checks of what it is given."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from advmim_lightning.method.contracts import (
    ContractCheck,
    ContractWatch,
    check_cuda_graph_trainer,
    check_fit_trainer,
    check_network,
    check_takes_a_mask,
    check_training_batch,
    describe_output,
)


class Net(nn.Module):
    """A segmenter stub: 1x1 convolution to ``out`` channels, optional masked pair."""

    def __init__(self, out: int = 4, pair: bool = False, **sizes: object) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, out, 1)
        self.pair = pair
        for key, value in sizes.items():
            setattr(self, key, value)

    def forward(self, x, mask=None):
        logits = self.conv(x)
        return (logits, logits) if self.pair else logits


# --------------------------------------------------------------------------- check_network
def test_check_network_accepts_matching_or_silent_networks():
    check_network("cnn", Net(), 4, 1, (32, 32))  # says nothing about its sizes
    check_network("cnn", Net(num_classes=4, in_channels=1, img_size=32), 4, 1, (32, 32))
    check_network("transformer", Net(img_size=(32, 48)), 4, 1, (32, 48))


def test_check_network_refuses_other_sizes():
    with pytest.raises(ValueError, match=r"^cnn predicts 3 classes but num_classes=4$"):
        check_network("cnn", Net(num_classes=3), 4, 1, (32, 32))
    with pytest.raises(ValueError) as error:
        check_network("transformer", Net(in_channels=3), 4, 1, (32, 32))
    assert str(error.value) == (
        "transformer takes 3 input channels but in_channels=1; build it with in_channels=1 "
        "(--model.transformer.init_args.in_channels 1)"
    )
    with pytest.raises(
        ValueError, match=r"built for img_size=\(224, 224\) but image_size=\(32, 32\)"
    ):
        check_network("transformer", Net(img_size=224), 4, 1, (32, 32))


# --------------------------------------------------------------------------- training batch
def test_check_training_batch_accepts_the_paired_dict():
    image, label = torch.zeros(2, 1, 8, 8), torch.zeros(2, 8, 8, dtype=torch.long)
    check_training_batch(
        {"labeled": {"image": image, "label": label}, "unlabeled": {"image": image}}
    )
    check_training_batch({"labeled": {"image": image, "label": label}})  # supervised


@pytest.mark.parametrize(
    ("batch", "found"),
    [
        ({"image": 0, "label": 0}, "got a dict with keys ['image', 'label']."),
        (
            {"labeled": {"image": 0}, "unlabeled": {}},
            "got a dict with keys ['labeled', 'unlabeled'] whose 'labeled' entry has keys "
            "['image'].",
        ),
        ((torch.zeros(1), torch.zeros(1)), "got a tuple of 2 entries."),
        ([torch.zeros(1)], "got a list of 1 entries."),
        (torch.zeros(2), "got a Tensor."),
    ],
)
def test_check_training_batch_names_what_it_got(batch, found):
    with pytest.raises(TypeError) as error:
        check_training_batch(batch)
    message = str(error.value)
    assert message.startswith("AdvMIMModule.training_step expects a paired batch {")
    assert found in message
    assert "batch_size=None" in message


# --------------------------------------------------------------------------- describe_output
def test_describe_output():
    assert describe_output(torch.zeros(2, 4, 8, 8)) == "a tensor of shape (2, 4, 8, 8)"
    assert describe_output((torch.zeros(1), 3)) == "a tuple of 2 (a tensor of shape (1,), a int)"
    assert describe_output([torch.zeros(1)] * 5) == (
        "a list of 5 (a tensor of shape (1,), a tensor of shape (1,), a tensor of shape (1,), "
        "a tensor of shape (1,), ...)"
    )
    assert describe_output({"out": torch.zeros(1)}) == "a dict"
    assert describe_output(None) == "a NoneType"


# --------------------------------------------------------------------------- ContractWatch
def test_contract_check_passes_and_removes_itself():
    nets = {"cnn": Net(), "transformer": Net()}
    watch = ContractWatch(num_classes=4)
    watch.watch(nets, "eval")
    x = torch.zeros(2, 1, 8, 8)
    nets["cnn"](x)
    assert watch.checked == set()  # one hook left
    assert not nets["cnn"]._forward_hooks and nets["transformer"]._forward_hooks
    nets["transformer"](x)
    assert watch.checked == {"eval"} and not nets["transformer"]._forward_hooks
    watch.watch(nets, "eval")  # checked once per mode
    assert not nets["cnn"]._forward_hooks


def test_contract_check_refuses_wrong_class_count():
    nets = {"cnn": Net(out=3)}
    ContractWatch(num_classes=4).watch(nets, "eval")
    with pytest.raises(ValueError) as error:
        nets["cnn"](torch.zeros(2, 1, 8, 8))
    assert str(error.value) == (
        "The cnn network (Net) breaks the segmenter contract: given x of shape (2, 1, 8, 8) it "
        "returned a tensor of shape (2, 3, 8, 8); expected one tensor of logits of shape "
        "(2, 4, 8, 8) (B x num_classes=4 x H x W, the input's resolution). See 'Swapping a "
        "network: the segmenter contract' in docs/python-api.md."
    )
    assert not nets["cnn"]._forward_hooks  # the hook removed itself before refusing
    nets["cnn"](torch.zeros(2, 1, 8, 8))  # no second check


def test_contract_check_refuses_a_pair_in_evaluation_and_one_tensor_when_masked():
    nets = {"cnn": Net(pair=True)}
    ContractWatch(4).watch(nets, "eval")
    with pytest.raises(TypeError, match=r"returned a tuple of 2 \(a tensor of shape"):
        nets["cnn"](torch.zeros(1, 1, 8, 8))

    nets = {"cnn": Net()}
    ContractWatch(4).watch(nets, "train")
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    with pytest.raises(TypeError) as error:
        nets["cnn"](torch.zeros(1, 1, 8, 8), mask=mask)
    message = str(error.value)
    assert "given x of shape (1, 1, 8, 8) and mask= (a B x H x W bool mask)" in message
    assert "expected a pair (logits, masked_logits) of tensors of shape (1, 4, 8, 8)" in message


def test_contract_check_accepts_the_masked_pair_and_skips_other_calls():
    nets = {"cnn": Net(pair=True)}
    watch = ContractWatch(4)
    watch.watch(nets, "train")
    nets["cnn"](torch.zeros(1, 1, 8, 8), mask=torch.zeros(1, 8, 8, dtype=torch.bool))
    assert watch.checked == {"train"}
    # Not called as the module calls it (no 4-D x): nothing to compare, no refusal.
    check = ContractCheck(ContractWatch(4), "cnn", "eval")
    check(Net(), (torch.zeros(3),), {}, "anything")


def test_removed_hooks_check_nothing():
    nets = {"cnn": Net(out=3)}
    watch = ContractWatch(4)
    watch.watch(nets, "eval")
    watch.remove()  # what compile_networks does before compiling
    nets["cnn"](torch.zeros(1, 1, 8, 8))  # no refusal


def test_a_segmenter_must_take_a_mask_for_advmim():
    class Bare(nn.Module):
        def forward(self, x):
            return x

    check_takes_a_mask("cnn", Net())  # forward(x, mask=None)
    with pytest.raises(TypeError, match=r"the transformer network \(Bare\) takes no mask"):
        check_takes_a_mask("transformer", Bare())


# --------------------------------------------------------------------------- trainers
def trainer_stub(scaler=None, ddp_kwargs=None, start="popen", device="cpu", world_size=1):
    strategy = SimpleNamespace(root_device=torch.device(device), _start_method=start)
    if ddp_kwargs is not None:
        strategy._ddp_kwargs = ddp_kwargs
    return SimpleNamespace(
        precision_plugin=SimpleNamespace(scaler=scaler), strategy=strategy, world_size=world_size
    )


def test_check_fit_trainer_accepts():
    check_fit_trainer(trainer_stub(), uses_masking=True)  # no DDP
    check_fit_trainer(trainer_stub(ddp_kwargs={"find_unused_parameters": True}), True)
    check_fit_trainer(trainer_stub(ddp_kwargs={}), uses_masking=False)  # CTCT / supervised
    check_fit_trainer(SimpleNamespace(strategy=SimpleNamespace()), uses_masking=True)


def test_check_fit_trainer_refuses_16_mixed():
    with pytest.raises(ValueError, match=r"precision='16-mixed' is not supported.*'bf16-mixed'"):
        check_fit_trainer(trainer_stub(scaler=object()), uses_masking=False)


@pytest.mark.parametrize(
    ("start", "suggestion"),
    [
        ("popen", "strategy='ddp_find_unused_parameters_true' (configs/trainer/ddp.yaml does)."),
        ("spawn", "strategy='ddp_spawn_find_unused_parameters_true'."),
    ],
)
def test_check_fit_trainer_refuses_advmim_ddp_without_unused_parameters(start, suggestion):
    with pytest.raises(ValueError) as error:
        check_fit_trainer(trainer_stub(ddp_kwargs={}, start=start), uses_masking=True)
    message = str(error.value)
    variant = "ddp" if start == "popen" else f"ddp_{start}"
    assert message.startswith(f"method='advmim' under SimpleNamespace ({variant!r}) needs ")
    assert "find_unused_parameters=True" in message
    assert message.endswith(suggestion)


def test_check_cuda_graph_trainer():
    check_cuda_graph_trainer(trainer_stub(device="cuda"))
    with pytest.raises(ValueError, match="needs a CUDA GPU, but this run trains on 'cpu'"):
        check_cuda_graph_trainer(trainer_stub(device="cpu"))
    with pytest.raises(ValueError, match="not supported with 2 processes"):
        check_cuda_graph_trainer(trainer_stub(device="cuda", world_size=2))
