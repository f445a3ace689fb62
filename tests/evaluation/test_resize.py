"""The zoom(order=0) resize against SciPy, and ``predict_volume`` resizing with it both ways."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from advmim_lightning import AdvMIMModule
from advmim_lightning.evaluation.resize import nearest_resize_indices, zoom_nearest


def scipy_zoom(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``zoom(order=0)`` of the last two axes to ``size``, as SSL4MIS calls it."""
    factors = (1,) * (x.ndim - 2) + (size[0] / x.shape[-2], size[1] / x.shape[-1])
    out = ndimage.zoom(x, factors, order=0)
    assert out.shape[-2:] == size  # the factors land on the wanted size
    return out


@pytest.mark.parametrize("size_out", [1, 2, 3, 14, 100, 188, 216, 224, 256, 301])
def test_indices_equal_scipy_zoom_for_every_input_length(size_out: int) -> None:
    # Input values 1..n, so the fill value 0 of zoom's constant mode shows up as index -1.
    for size_in in [*range(1, 65), 154, 216, 217, 224, 256, 301, 428]:
        x = np.arange(1, size_in + 1, dtype=np.float64)[:, None]
        ref = ndimage.zoom(x, (size_out / size_in, 1), order=0)[:, 0].astype(np.int64) - 1
        got = nearest_resize_indices(size_in, size_out).numpy()
        np.testing.assert_array_equal(got, ref, err_msg=f"{size_in} -> {size_out}")


def test_indices_mark_zoom_fill_at_the_last_upscaled_position() -> None:
    # 32 -> 224: the last coordinate is 31.000000000000004 > 31, so zoom reads its fill value.
    index = nearest_resize_indices(32, 224)
    assert index[-1].item() == -1 and index[-2].item() == 31
    assert nearest_resize_indices(5, 9).tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4]
    with pytest.raises(ValueError, match=r"resize lengths must be >= 1, got 0 -> 4"):
        nearest_resize_indices(0, 4)


ROUND_TRIPS = [
    ((256, 216), (224, 224)),  # ACDC-like slice to the network size and back
    ((217, 301), (224, 224)),
    ((32, 28), (224, 216)),  # upscaling from small sizes: zoom fills the last row and column
    ((5, 7), (188, 224)),
    ((4, 3), (13, 9)),
    ((1, 6), (4, 11)),
]


@pytest.mark.parametrize("shape,size", ROUND_TRIPS)
def test_zoom_nearest_equals_scipy_both_ways_for_images_and_labels(
    shape: tuple[int, int], size: tuple[int, int]
) -> None:
    rng = np.random.default_rng(sum(shape))
    image = (rng.random((2, 3, *shape)) + 0.5).astype(np.float32)  # no zeros: fills show
    label = rng.integers(1, 4, shape).astype(np.int64)
    for x in (image, label, label.astype(np.uint8)):
        forward = zoom_nearest(torch.from_numpy(x), size)
        back = zoom_nearest(forward, shape)
        ref_forward = scipy_zoom(x, size)
        ref_back = scipy_zoom(ref_forward, shape)
        np.testing.assert_array_equal(forward.numpy(), ref_forward)
        np.testing.assert_array_equal(back.numpy(), ref_back)
        assert forward.dtype == torch.from_numpy(x).dtype
    same = torch.from_numpy(image)
    copy = zoom_nearest(same, shape)
    assert torch.equal(copy, same) and copy.data_ptr() != same.data_ptr()


class PixelRule(nn.Module):
    """A network stub whose per-pixel class depends on the value and on the position.

    Class ``(floor(4 x) + row // 5 + col // 7 + offset) % C`` with logit ``scale`` (0 for the
    others), so the prediction is known by hand at any input size and depends on where each
    network-resolution pixel reads from, not only on which values it reads.
    """

    def __init__(self, num_classes: int, offset: int, scale: float) -> None:
        super().__init__()
        self.num_classes, self.offset, self.scale = num_classes, offset, scale
        self.weight = nn.Parameter(torch.ones(()))

    @staticmethod
    def classes(x: np.ndarray, num_classes: int, offset: int) -> np.ndarray:
        rows = np.arange(x.shape[-2])[:, None] // 5
        cols = np.arange(x.shape[-1])[None, :] // 7
        return (np.floor(4 * x).astype(np.int64) + rows + cols + offset) % num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls = torch.from_numpy(self.classes(x[:, 0].numpy(), self.num_classes, self.offset))
        return F.one_hot(cls, self.num_classes).movedim(-1, 1).float() * self.scale * self.weight


@pytest.mark.parametrize("shape", [(256, 216), (217, 301), (40, 36)])
def test_predict_volume_resizes_like_ssl4mis_both_ways(shape: tuple[int, int]) -> None:
    classes = 4
    module = AdvMIMModule(
        method="supervised",
        num_classes=classes,
        image_size=224,
        # The CNN's logits are weaker, so the ensemble's argmax is the transformer's.
        transformer=PixelRule(classes, offset=0, scale=10.0),
        cnn=PixelRule(classes, offset=1, scale=5.0),
        eval_slice_batch=2,
    )
    volume = np.random.default_rng(0).random((1, 3, *shape)).astype(np.float32)
    predictions = module.predict_volume(torch.from_numpy(volume))

    for name, offset in (("transformer", 0), ("cnn", 1), ("ensemble", 0)):
        assert predictions[name].shape == (3, *shape) and predictions[name].dtype == torch.int64
        for d in range(3):
            # The published evaluation: zoom to 224, argmax, zoom the prediction back.
            at_224 = scipy_zoom(volume[0, d], (224, 224))
            expected = scipy_zoom(PixelRule.classes(at_224, classes, offset), shape)
            np.testing.assert_array_equal(predictions[name][d].numpy(), expected, err_msg=name)

    # The bilinear option changes only the image resize; the prediction goes back by zoom.
    module.hparams.eval_interpolation = "bilinear"
    bilinear = module.predict_volume(torch.from_numpy(volume))["transformer"]
    slices = torch.from_numpy(volume).movedim(1, 0)  # D x C x H x W
    at_224 = F.interpolate(slices, (224, 224), mode="bilinear", align_corners=True)[:, 0].numpy()
    for d in range(3):
        expected = scipy_zoom(PixelRule.classes(at_224[d], classes, 0), shape)
        np.testing.assert_array_equal(bilinear[d].numpy(), expected)
