"""Tests for advmim_lightning.method.optim: the optimisers and per-optimiser clipping."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advmim_lightning.method.optim import SGD_IMPLEMENTATIONS, build_optimizers, clip_gradients


def parts() -> list[nn.Module]:
    torch.manual_seed(0)
    cnn, transformer = nn.Linear(3, 2), nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    transformer[0].bias.requires_grad_(False)  # a frozen parameter is not optimised
    return [cnn, transformer]


def build(impl: str = "auto", clip_norm: float = 0.0, modules: list[nn.Module] | None = None):
    return build_optimizers(
        modules if modules is not None else parts(),
        ["cnn", "transformer"],
        lr=0.01,
        momentum=0.9,
        weight_decay=1e-4,
        clip_norm=clip_norm,
        impl=impl,
    )


def test_sgd_implementations_flags():
    assert SGD_IMPLEMENTATIONS == {
        "auto": {"foreach": True, "fused": None},
        "for_loop": {"foreach": False, "fused": None},
        "foreach": {"foreach": True, "fused": None},
        "fused": {"foreach": None, "fused": True},
    }


@pytest.mark.parametrize("impl", sorted(SGD_IMPLEMENTATIONS))
def test_build_optimizers_one_sgd_per_part(impl):
    modules = parts()
    optimizers, schedulers = build(impl, clip_norm=12.0, modules=modules)
    assert len(optimizers) == 2 and all(isinstance(o, torch.optim.SGD) for o in optimizers)
    for optimizer, module in zip(optimizers, modules, strict=True):
        (group,) = optimizer.param_groups
        trainable = [p for p in module.parameters() if p.requires_grad]
        assert [id(p) for p in group["params"]] == [id(p) for p in trainable]
        assert group["lr"] == 0.01
        assert group["momentum"] == 0.9
        assert group["weight_decay"] == 1e-4
        assert group["clip_norm"] == 12.0
        assert group["foreach"] == SGD_IMPLEMENTATIONS[impl]["foreach"]
        assert group["fused"] == SGD_IMPLEMENTATIONS[impl]["fused"]
    assert len(optimizers[1].param_groups[0]["params"]) == 3  # frozen bias left out
    assert [s["name"] for s in schedulers] == ["lr-cnn", "lr-transformer"]
    assert all(s["interval"] == "step" for s in schedulers)
    for scheduler, optimizer in zip(schedulers, optimizers, strict=True):
        assert scheduler["scheduler"].optimizer is optimizer
        optimizer.step()  # no gradients: nothing moves
        scheduler["scheduler"].step()
        assert optimizer.param_groups[0]["lr"] == 0.01  # constant: factor 1


def test_build_optimizers_unknown_impl():
    with pytest.raises(KeyError):
        build("turbo")


def steps(impl: str, clip_norm: float) -> list[torch.Tensor]:
    """Three SGD steps with fixed gradients; returns the final parameters."""
    modules = parts()
    optimizers, _ = build(impl, clip_norm=clip_norm, modules=modules)
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        for optimizer in optimizers:
            for p in optimizer.param_groups[0]["params"]:
                p.grad = torch.randn(p.shape, generator=generator)
            clip_gradients(optimizer)
            optimizer.step()
    return [p.detach().clone() for m in modules for p in m.parameters()]


@pytest.mark.parametrize("clip_norm", [0.0, 0.5])
def test_implementations_give_the_same_update(clip_norm):
    reference = steps("for_loop", clip_norm)
    start = [p.detach().clone() for m in parts() for p in m.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(reference, start, strict=True))
    for impl in ("auto", "foreach", "fused"):
        for got, expected in zip(steps(impl, clip_norm), reference, strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    for impl in ("auto", "foreach"):  # the default's foreach kernels: the loop's bits
        got = steps(impl, clip_norm)
        assert all(torch.equal(a, b) for a, b in zip(got, reference, strict=True))


def test_clipping_is_torchs_clip_grad_norm_bit_for_bit():
    modules = parts()
    (optimizer, _), _ = build(clip_norm=0.3, modules=modules)
    params = optimizer.param_groups[0]["params"]
    generator = torch.Generator().manual_seed(2)
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator) * 5
    copies = [nn.Parameter(p.detach().clone()) for p in params]
    for copy, p in zip(copies, params, strict=True):
        copy.grad = p.grad.clone()
    torch.nn.utils.clip_grad_norm_(copies, 0.3, foreach=False)
    clip_gradients(optimizer)
    assert all(torch.equal(p.grad, c.grad) for p, c in zip(params, copies, strict=True))
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
    assert abs(float(total) - 0.3) < 1e-5


def test_sgd_update_value():
    # One step, momentum buffer starts at the gradient: p - lr * (g + wd * p).
    p = nn.Parameter(torch.tensor([1.0, -2.0]))
    module = nn.Module()
    module.p = p
    (optimizer,), _ = build_optimizers(
        [module], ["cnn"], lr=0.1, momentum=0.9, weight_decay=0.5, clip_norm=0.0, impl="for_loop"
    )
    p.grad = torch.tensor([2.0, 4.0])
    optimizer.step()
    expected = torch.tensor([1.0, -2.0]) - 0.1 * (
        torch.tensor([2.0, 4.0]) + 0.5 * torch.tensor([1.0, -2.0])
    )
    torch.testing.assert_close(p.detach(), expected)


def optimizer_with_grads(clip_norm: float) -> tuple[torch.optim.Optimizer, list[nn.Parameter]]:
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.tensor([3.0]), torch.tensor([4.0])  # total norm 5
    optimizer = torch.optim.SGD([{"params": [a, b], "clip_norm": clip_norm}], lr=0.1)
    return optimizer, [a, b]


def test_clip_gradients_scales_to_the_norm():
    optimizer, (a, b) = optimizer_with_grads(clip_norm=1.0)
    clip_gradients(optimizer)
    assert a.grad.item() == pytest.approx(0.6, rel=1e-5)
    assert b.grad.item() == pytest.approx(0.8, rel=1e-5)
    total = torch.linalg.vector_norm(torch.cat([a.grad, b.grad]))
    assert total.item() == pytest.approx(1.0, rel=1e-5)


def test_clip_gradients_counts_every_group():
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.tensor([3.0]), torch.tensor([4.0])
    optimizer = torch.optim.SGD([{"params": [a], "clip_norm": 2.5}, {"params": [b]}], lr=0.1)
    clip_gradients(optimizer)  # the first group's clip, over both groups' gradients
    assert (a.grad.item(), b.grad.item()) == pytest.approx((1.5, 2.0), rel=1e-5)


@pytest.mark.parametrize("clip_norm", [0.0, 5.0, 10.0])
def test_clip_gradients_leaves_small_or_unclipped_gradients(clip_norm):
    optimizer, (a, b) = optimizer_with_grads(clip_norm)
    clip_gradients(optimizer)
    assert a.grad.item() == pytest.approx(3.0, rel=1e-5)
    assert b.grad.item() == pytest.approx(4.0, rel=1e-5)


def test_clip_gradients_without_clip_norm_key_is_a_no_op():
    a = nn.Parameter(torch.zeros(1))
    a.grad = torch.tensor([30.0])
    clip_gradients(torch.optim.SGD([a], lr=0.1))
    assert a.grad.item() == 30.0
