"""Stream batching: one call per segmenter equals the published per-call semantics.

One iteration of tiny networks runs both ways, all streams batched and separate calls, with
the same weights and masks and dropout off: outputs, every loss term, every gradient and the
batch-norm running statistics (and ``num_batches_tracked``) agree to 1e-6 in float32, and to
1e-12 in float64 (what is left in float32 is rounding: sums over a larger batch).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from advmim_lightning.method import objective
from advmim_lightning.method.config import build_settings
from advmim_lightning.method.model import AdvMIMModel
from advmim_lightning.networks import SwinUNet, UNet
from advmim_lightning.networks.streams import StreamBatch, interleave, supports_stream_statistics
from tiny import TINY_CLASSES, tiny_batch

SIZE = 32
TOLERANCE = {"rtol": 1e-6, "atol": 1e-6}


def no_dropout_unet(**kwargs) -> UNet:
    return UNet(channels=(4, 8, 8, 8, 8), dropout=(0.0,) * 5, num_classes=TINY_CLASSES, **kwargs)


def small_swin() -> SwinUNet:
    return SwinUNet(
        num_classes=TINY_CLASSES,
        img_size=SIZE,
        embed_dim=12,
        depths=(1, 1, 1),
        num_heads=(1, 1, 1),
        window_size=2,
        drop_path_rate=0.0,
    )


def model_pair(dtype=torch.float32, **settings) -> tuple[AdvMIMModel, AdvMIMModel]:
    """The same model twice: batched streams and separate calls (dropout off in both)."""
    torch.manual_seed(0)
    s = build_settings(
        image_size=(SIZE, SIZE), stream_batching="batched", mask_block_size=8, **settings
    )
    batched = AdvMIMModel(s, cnn=no_dropout_unet(), transformer=small_swin()).to(dtype)
    separate = copy.deepcopy(batched)
    separate.settings = batched.settings.replace(stream_batching="separate")
    return batched, separate


def one_iteration(model: AdvMIMModel, masks, ct_weight=0.1, device="cpu"):
    batch = tiny_batch(n_labeled=2, n_unlabeled=2, size=SIZE, seed=1)
    dtype = next(model.parameters()).dtype
    x_l, y, x_u = batch["labeled"]["image"], batch["labeled"]["label"], batch["unlabeled"]["image"]
    x_l, y, x_u = x_l.to(device, dtype), y.to(device), x_u.to(device, dtype)
    model.train()
    if masks is None:
        masks = model.draw_masks(x_l, x_u, torch.Generator(device).manual_seed(5))
    losses = model.iteration_losses(x_l, y, x_u, masks, ct_weight)
    total = losses.segmenter_total
    if losses.discriminator_total is not None:
        total = total + losses.discriminator_total
    total.backward()
    return losses, masks


def assert_same_iteration(
    batched: AdvMIMModel, separate: AdvMIMModel, tolerance: dict = TOLERANCE
) -> None:
    got, masks = one_iteration(batched, None)
    expected, _ = one_iteration(separate, masks)
    assert got.terms.keys() == expected.terms.keys()
    for name, value in expected.terms.items():
        torch.testing.assert_close(got.terms[name], value, **tolerance, msg=name)
    torch.testing.assert_close(got.segmenter_total, expected.segmenter_total, **tolerance)
    for (name, p), q in zip(batched.named_parameters(), separate.parameters(), strict=True):
        if p.grad is None or q.grad is None:
            assert p.grad is None and q.grad is None, name
            continue
        torch.testing.assert_close(p.grad, q.grad, **tolerance, msg=name)
    moved = 0
    for (name, b), c in zip(batched.named_buffers(), separate.buffers(), strict=True):
        if name.endswith("num_batches_tracked"):
            assert int(b) == int(c) and int(c) > 0, name
        else:
            moved += not torch.equal(c, torch.zeros_like(c)) and not torch.equal(c, c.new_ones(()))
            torch.testing.assert_close(b, c, **tolerance, msg=name)
    assert moved > 0  # the running statistics did move


def test_four_streams_advmim_batched_equal_separate_calls():
    """AdvMIM's default: labeled and unlabeled batches, each original and masked (S = 4)."""
    batched, separate = model_pair()
    assert batched.settings.forward_batching == "separate"
    assert_same_iteration(batched, separate)
    assert int(batched.cnn.down_blocks[0].conv.norm1.num_batches_tracked) == 4
    assert int(batched.cnn.in_block.norm1.num_batches_tracked) == 2


def test_the_batched_iteration_is_the_separate_one_in_float64():
    """What float32 leaves is rounding: in float64 the two agree to 1e-12."""
    batched, separate = model_pair(torch.float64)
    assert_same_iteration(batched, separate, {"rtol": 1e-12, "atol": 1e-12})


def test_two_streams_supervised_plus_masked_batched_equal_separate_calls():
    """One joint batch, original and masked (S = 2)."""
    batched, separate = model_pair(forward_batching="joint")
    assert_same_iteration(batched, separate)
    assert int(batched.cnn.down_blocks[0].conv.norm1.num_batches_tracked) == 2


def test_ctct_batched_equal_separate_calls():
    """CTCT with separate labeled / unlabeled calls and no masked stream."""
    batched, separate = model_pair(method="ctct", forward_batching="separate")
    assert_same_iteration(batched, separate)


def test_outputs_and_running_statistics_of_the_unet_equal_separate_calls():
    torch.manual_seed(0)
    net = no_dropout_unet().train()
    reference = copy.deepcopy(net)
    images = [torch.randn(2, 1, 32, 32) for _ in range(2)]
    masks = [torch.rand(2, 32, 32) > 0.5 for _ in range(2)]
    logits, masked = net.forward_streams(images, masks)
    calls = [reference(x, mask=m) for x, m in zip(images, masks, strict=True)]
    torch.testing.assert_close(logits, torch.cat([c[0] for c in calls]), **TOLERANCE)
    torch.testing.assert_close(masked, torch.cat([c[1] for c in calls]), **TOLERANCE)
    for (name, b), c in zip(net.named_buffers(), reference.buffers(), strict=True):
        torch.testing.assert_close(b, c, **TOLERANCE, msg=name)
    # evaluation uses the running statistics: batched or not, the same numbers
    net.eval(), reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            net.forward_streams(images), torch.cat([reference(x) for x in images]), **TOLERANCE
        )


def test_batches_of_different_sizes_run_as_separate_calls_bit_for_bit():
    torch.manual_seed(0)
    net = no_dropout_unet().train()
    reference = copy.deepcopy(net)
    images = [torch.randn(2, 1, 32, 32), torch.randn(3, 1, 32, 32)]
    masks = [torch.rand(x.shape[0], 32, 32) > 0.5 for x in images]
    logits, masked = net.forward_streams(images, masks)
    calls = [reference(x, mask=m) for x, m in zip(images, masks, strict=True)]
    assert torch.equal(logits, torch.cat([c[0] for c in calls]))
    assert torch.equal(masked, torch.cat([c[1] for c in calls]))
    for b, c in zip(net.buffers(), reference.buffers(), strict=True):
        assert torch.equal(b, c)


def test_a_cumulative_batch_norm_is_not_batched():
    net = no_dropout_unet()
    assert supports_stream_statistics(net)
    net.in_block.norm1.momentum = None
    assert not supports_stream_statistics(net)
    assert supports_stream_statistics(nn.Sequential(nn.InstanceNorm2d(3), nn.LayerNorm(3)))
    assert not supports_stream_statistics(nn.InstanceNorm2d(3, track_running_stats=True))
    assert not supports_stream_statistics(nn.SyncBatchNorm(3))


class PlainSegmenter(nn.Module):
    """A user network without ``forward_streams``: called once per batch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, TINY_CLASSES, 3, padding=1)
        self.calls = 0

    def forward(self, x, mask=None):
        self.calls += 1
        out = self.conv(x)
        return out if mask is None else (out, self.conv(x * (~mask).unsqueeze(1)))


def test_a_subclass_overriding_forward_alone_gets_separate_calls():
    class Rescaled(UNet):
        def forward(self, x, mask=None):
            return super().forward(2 * x, mask=mask)

    assert objective.batches_its_calls(no_dropout_unet())
    assert not objective.batches_its_calls(Rescaled(channels=(4, 8), dropout=(0.0, 0.0)))
    assert not objective.batches_its_calls(PlainSegmenter())


def test_a_batch_norm_not_tracking_keeps_its_buffers_unchanged():
    norm = nn.BatchNorm2d(3).train()
    norm.track_running_stats = False  # buffers kept, as PyTorch then leaves them alone
    before = norm.running_mean.clone(), int(norm.num_batches_tracked)
    streams = [torch.randn(4, 3, 5, 5) + i for i in range(2)]
    run = StreamBatch(2)
    out = run.batch_norm(norm, interleave(streams))
    run.update_running_stats()
    expected = interleave([nn.BatchNorm2d(3, track_running_stats=False)(x) for x in streams])
    torch.testing.assert_close(out, expected, **TOLERANCE)
    assert torch.equal(norm.running_mean, before[0]) and int(norm.num_batches_tracked) == before[1]


def test_a_network_without_forward_streams_gets_separate_calls():
    net = PlainSegmenter()
    x = [torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)]
    masks = [torch.rand(2, 16, 16) > 0.5 for _ in range(4)]
    unet = no_dropout_unet()
    logits, masked = objective.segmenter_forward(
        {"transformer": net, "cnn": unet}, x, masks, masking=True, batched=True
    )
    assert net.calls == 2
    assert list(logits) == ["transformer", "cnn"] and list(masked) == ["transformer", "cnn"]
    assert all(v.shape == (4, TINY_CLASSES, 16, 16) for v in [*logits.values(), *masked.values()])
    # the transformer's masks are the even calls: its first masked stream is its own
    expected = net.conv(x[0] * (~masks[0]).unsqueeze(1))
    torch.testing.assert_close(masked["transformer"][:2], expected)


@pytest.mark.parametrize("count", [2, 4])
def test_one_batch_norm_call_normalises_each_stream_with_its_own_statistics(count):
    norm = nn.BatchNorm2d(3).train()
    reference = copy.deepcopy(norm)
    streams = [torch.randn(4, 3, 5, 5) * (i + 1) + i for i in range(count)]
    run = StreamBatch(count)
    out = run.batch_norm(norm, interleave(streams))
    run.update_running_stats()
    expected = [reference(x) for x in streams]
    torch.testing.assert_close(out, interleave(expected), **TOLERANCE)
    torch.testing.assert_close(norm.running_mean, reference.running_mean, **TOLERANCE)
    torch.testing.assert_close(norm.running_var, reference.running_var, **TOLERANCE)
    assert int(norm.num_batches_tracked) == count == int(reference.num_batches_tracked)
