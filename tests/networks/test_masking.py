from __future__ import annotations

import pytest
import torch

from advmim_lightning.networks import downsample_mask, num_masked_blocks, random_block_mask


def _block_view(mask: torch.Tensor, block: int) -> torch.Tensor:
    b, h, w = mask.shape
    return mask.view(b, h // block, block, w // block, block)


def test_default_mask_masks_35_of_49_blocks_at_224() -> None:
    mask = random_block_mask(3, 224)
    assert mask.shape == (3, 224, 224)
    assert mask.dtype == torch.bool
    blocks = _block_view(mask, 32)
    # constant over each 32 x 32 block
    assert torch.equal(blocks, blocks[:, :, :1, :, :1].expand_as(blocks))
    assert blocks[:, :, 0, :, 0].sum(dim=(1, 2)).tolist() == [35, 35, 35]
    assert mask.sum(dim=(1, 2)).tolist() == [35 * 32 * 32] * 3


@pytest.mark.parametrize(
    ("image_size", "block", "ratio", "expected"),
    [
        (64, 16, 0.7, 12),  # ceil(0.7 * 16) = ceil(11.2)
        ((32, 64), 16, 0.5, 4),  # 2 x 4 grid
        (64, 32, 0.0, 0),
        (64, 32, 1.0, 4),
        (96, 32, 0.1, 1),  # ceil(0.9)
        (32, 4, 0.25, 16),  # 64 blocks
    ],
)
def test_mask_count_is_exact(image_size, block, ratio, expected) -> None:
    mask = random_block_mask(4, image_size, block_size=block, ratio=ratio)
    counts = _block_view(mask, block)[:, :, 0, :, 0].sum(dim=(1, 2))
    assert counts.tolist() == [expected] * 4


def test_num_masked_blocks_ignores_float_noise() -> None:
    assert num_masked_blocks(49, 0.7) == 35
    assert 0.55 * 100 > 55  # float noise the tolerance guards against
    assert num_masked_blocks(100, 0.55) == 55
    assert num_masked_blocks(10, 0.0) == 0
    assert num_masked_blocks(10, 1.0) == 10


def test_masks_differ_between_calls_and_repeat_under_a_seed() -> None:
    gen = torch.Generator().manual_seed(123)
    first = random_block_mask(4, 64, block_size=16, generator=gen)
    second = random_block_mask(4, 64, block_size=16, generator=gen)
    assert not torch.equal(first, second)
    # samples within one call differ too
    assert not torch.equal(first[0], first[1])
    again = random_block_mask(4, 64, block_size=16, generator=torch.Generator().manual_seed(123))
    assert torch.equal(first, again)


def test_generator_state_resumes_exactly() -> None:
    gen = torch.Generator().manual_seed(7)
    random_block_mask(2, 64, block_size=16, generator=gen)
    state = gen.get_state()
    expected = random_block_mask(2, 64, block_size=16, generator=gen)
    resumed = torch.Generator()
    resumed.set_state(state)
    assert torch.equal(random_block_mask(2, 64, block_size=16, generator=resumed), expected)


def test_global_rng_is_used_without_generator() -> None:
    torch.manual_seed(5)
    a = random_block_mask(2, 64, block_size=16)
    torch.manual_seed(5)
    assert torch.equal(random_block_mask(2, 64, block_size=16), a)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"image_size": 100}, ValueError, "divisible by block_size=32"),
        ({"image_size": (64, 48)}, ValueError, "(64, 48)"),
        ({"image_size": 64, "ratio": 1.5}, ValueError, "ratio must be in [0, 1]"),
        ({"image_size": 64, "block_size": 0}, ValueError, "block_size must be an int >= 1"),
        ({"image_size": "64"}, TypeError, "image_size must be an int or (H, W)"),
    ],
)
def test_invalid_arguments(kwargs, error, message) -> None:
    with pytest.raises(error) as info:
        random_block_mask(2, **kwargs)
    assert message in str(info.value)


def test_generator_on_another_device_is_rejected() -> None:
    with pytest.raises(ValueError, match="generator lives on cpu"):
        random_block_mask(2, 64, generator=torch.Generator(), device="meta")


def test_device_defaults_to_the_generator_device() -> None:
    assert random_block_mask(1, 64, generator=torch.Generator()).device.type == "cpu"


def test_downsample_mask_marks_a_cell_if_any_pixel_is_masked() -> None:
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 0, 0] = True  # one pixel of the top-left 2 x 2 cell
    mask[0, 2:, 2:] = True  # the whole bottom-right cell
    expected = torch.tensor([[[True, False], [False, True]]])
    assert torch.equal(downsample_mask(mask, 2), expected)
    with pytest.raises(ValueError, match="not divisible by factor 3"):
        downsample_mask(mask, 3)
