"""Normalisation and the SSL4MIS-equivalent augmentation, against SciPy and hand values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from advmim_lightning.data.transforms import (
    AugmentParams,
    SliceAugmenter,
    nearest_resize_indices,
    normalize_volume,
)


def test_nearest_resize_matches_scipy_zoom_rounding() -> None:
    # 5 -> 9: coordinates 0, .5, 1, ... ; ties round up like zoom(order=0).
    assert nearest_resize_indices(5, 9).tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert nearest_resize_indices(7, 5).tolist() == [0, 2, 3, 5, 6]
    assert nearest_resize_indices(1, 3).tolist() == [0, 0, 0]


@pytest.mark.parametrize(
    "shape,out",
    [
        ((13, 8), (13, 8)),
        ((37, 41), (64, 48)),
        ((40, 30), (32, 32)),
        # zoom reads its fill value 0 at the last row and column (float rounding), as SSL4MIS
        ((32, 28), (224, 216)),
        ((256, 216), (224, 224)),
    ],
)
def test_rotation_and_resize_equal_scipy(shape: tuple[int, int], out: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    image = rng.random(shape).astype(np.float32)
    label = rng.integers(0, 4, shape).astype(np.uint8)
    aug = SliceAugmenter(out)
    zoom = (out[0] / shape[0], out[1] / shape[1])
    for angle in (-20, -7, 0, 3, 19):
        params = AugmentParams(rot_flip=False, k=0, flip_axis=0, rotate=True, angle=angle)
        got_image, got_label = aug(torch.from_numpy(image)[None], torch.from_numpy(label), params)
        ref_image = ndimage.zoom(
            ndimage.rotate(image, angle, order=0, reshape=False), zoom, order=0
        )
        ref_label = ndimage.zoom(
            ndimage.rotate(label, angle, order=0, reshape=False), zoom, order=0
        )
        np.testing.assert_array_equal(got_image[0].numpy(), ref_image)
        np.testing.assert_array_equal(got_label.numpy(), ref_label)
        assert got_image.dtype == torch.float32 and got_label.dtype == torch.int64


def test_rot_flip_equals_numpy() -> None:
    image = np.arange(6 * 5, dtype=np.float32).reshape(6, 5)
    aug = SliceAugmenter((6, 5))
    for k in range(4):
        for axis in range(2):
            params = AugmentParams(rot_flip=True, k=k, flip_axis=axis, rotate=False, angle=0)
            ref = np.flip(np.rot90(image, k), axis)
            ref = ndimage.zoom(ref, (6 / ref.shape[0], 5 / ref.shape[1]), order=0)
            got, label = aug(
                torch.from_numpy(image)[None], torch.from_numpy(image.astype(np.uint8)), params
            )
            np.testing.assert_array_equal(got[0].numpy(), ref)
            np.testing.assert_array_equal(label.numpy(), ref.astype(np.int64))


def test_branch_probabilities_follow_ssl4mis() -> None:
    aug = SliceAugmenter((8, 8))
    draws = [aug.params(0, 0, i) for i in range(4000)]
    rot_flip = np.mean([p.rot_flip for p in draws])
    rotate = np.mean([p.rotate for p in draws])
    assert abs(rot_flip - 0.5) < 0.03 and abs(rotate - 0.25) < 0.03  # SSL4MIS's if / elif
    assert {p.k for p in draws} == {0, 1, 2, 3} and {p.flip_axis for p in draws} == {0, 1}
    angles = {p.angle for p in draws}
    assert min(angles) == -20 and max(angles) == 19
    always = SliceAugmenter((8, 8), rotate_probability=1.0)
    assert abs(np.mean([always.params(0, 0, i).rotate for i in range(4000)]) - 0.5) < 0.03


def test_params_are_keyed_not_global() -> None:
    aug = SliceAugmenter((8, 8))
    torch.manual_seed(1)
    np.random.seed(1)  # noqa: NPY002 (the global generator must not matter)
    first = [aug.params(3, 1, i) for i in range(20)]
    torch.manual_seed(2)
    np.random.seed(2)  # noqa: NPY002 (the global generator must not matter)
    assert [aug.params(3, 1, i) for i in range(20)] == first
    assert [aug.params(4, 1, i) for i in range(20)] != first
    assert SliceAugmenter((8, 8), augment=False).params(0, 0, 0) is None


def test_bilinear_image_keeps_nearest_label() -> None:
    image = torch.arange(16, dtype=torch.float32).reshape(1, 4, 4)
    label = torch.arange(16, dtype=torch.uint8).reshape(4, 4)
    out_image, out_label = SliceAugmenter((7, 7), image_interpolation="bilinear")(
        image, label, None
    )
    assert out_image.shape == (1, 7, 7) and out_label.shape == (7, 7)
    assert out_image[0, 0, 1].item() == pytest.approx(0.5)  # between 0 and 1
    assert set(out_label.unique().tolist()) <= set(range(16))


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="image_interpolation"):
        SliceAugmenter((8, 8), image_interpolation="cubic")
    with pytest.raises(ValueError, match="rotate_probability"):
        SliceAugmenter((8, 8), rotate_probability=1.5)
    with pytest.raises(ValueError, match="output_size"):
        SliceAugmenter((0, 8))


def test_normalisations_by_hand() -> None:
    x = np.array([[[0.0, 2.0], [4.0, 6.0]], [[5.0, 5.0], [5.0, 5.0]]])  # 2 channels
    np.testing.assert_allclose(normalize_volume(x, "minmax")[0], [[0, 1 / 3], [2 / 3, 1]])
    np.testing.assert_array_equal(normalize_volume(x, "minmax")[1], 0.0)  # constant channel
    z = normalize_volume(x, "zscore")[0]
    np.testing.assert_allclose(z, (x[0] - 3.0) / np.sqrt(5.0), rtol=1e-6)
    ct = normalize_volume(np.array([[-1000.0, -160.0, 40.0, 240.0, 3000.0]]), "ct_window")
    np.testing.assert_allclose(ct[0], [0.0, 0.0, 0.5, 1.0, 1.0])
    assert normalize_volume(x, "none").dtype == np.float32
    with pytest.raises(ValueError, match="normalization must be one of"):
        normalize_volume(x, "robust")


def test_normalisation_of_a_strided_view() -> None:
    volume = np.arange(24.0).reshape(2, 3, 4)
    view = np.moveaxis(volume, 2, 0)[None]  # not C-contiguous
    out = normalize_volume(view, "minmax")
    assert out.flags.c_contiguous and out.shape == (1, 4, 2, 3)
    np.testing.assert_allclose(out, view / 23.0, rtol=1e-6)
