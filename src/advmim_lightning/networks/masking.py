"""Block masks for the masked domain of AdvMIM, as pure functions.

The image is split into square blocks (32 x 32 pixels by default, a 7 x 7 grid at 224 x 224) and
``ceil(ratio * num_blocks)`` of them are masked, a fresh random choice per sample. The masks are
drawn on the device from a caller-owned :class:`torch.Generator`, so a LightningModule can keep the
generator's state in its checkpoints and resume exactly; nothing here synchronises with the host.

The networks take such a mask at *input* resolution (``B x H x W``, ``True`` = masked) and bring it
to the resolution where they mask: :func:`downsample_mask` for the Swin-UNet token grid, the input
resolution itself for the U-Net's first block.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["check_mask", "downsample_mask", "num_masked_blocks", "random_block_mask"]

# ratio * num_blocks is computed in floating point; 0.55 * 100 = 55.00000000000001 would make
# ceil() mask one block too many. Products this close to an integer count as that integer.
_CEIL_TOLERANCE = 1e-9


def _pair(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    if isinstance(value, bool):
        raise TypeError(f"networks/masking.py: {name} must be an int or (H, W), got {value!r}.")
    if isinstance(value, int):
        return value, value
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return int(value[0]), int(value[1])
    raise TypeError(f"networks/masking.py: {name} must be an int or (H, W), got {value!r}.")


def num_masked_blocks(num_blocks: int, ratio: float) -> int:
    """Number of masked blocks, ``ceil(ratio * num_blocks)``.

    The product is rounded with a 1e-9 tolerance so that floating-point noise (``0.55 * 100 =
    55.00000000000001``) does not mask an extra block; ``ceil(0.7 * 49) = 35``.

    Args:
        num_blocks: blocks per image (>= 1).
        ratio: fraction of blocks to mask, in [0, 1].

    Returns:
        The count, in ``[0, num_blocks]``.
    """
    return min(num_blocks, max(0, math.ceil(ratio * num_blocks - _CEIL_TOLERANCE)))


def random_block_mask(
    batch_size: int,
    image_size: int | tuple[int, int],
    block_size: int = 32,
    ratio: float = 0.7,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draw random block masks, exactly ``ceil(ratio * num_blocks)`` masked blocks per sample.

    Each sample gets an independent uniformly random subset of blocks: one uniform score per
    block from ``torch.rand(..., generator=generator, device=device)``, the blocks with the
    smallest scores are masked. Everything runs on ``device``; no host synchronisation.

    Call it eagerly, outside ``torch.compile``: Dynamo cannot trace :class:`torch.Generator`
    arguments. The networks take the mask as an input, so they compile on their own.

    Args:
        batch_size: number of masks B (>= 1).
        image_size: image size, an int for square images or (H, W). H and W must be divisible by
            ``block_size``.
        block_size: side of a square block in pixels (32 in the public code).
        ratio: fraction of blocks to mask, in [0, 1] (0.7 in the public code).
        generator: optional :class:`torch.Generator` on ``device``; the global RNG when None.
        device: where to draw the mask; defaults to the generator's device, else the CPU.

    Returns:
        Bool tensor of shape B x H x W on ``device``, ``True`` where masked, constant over each
        block.

    Raises:
        ValueError: non-positive sizes, H or W not divisible by ``block_size``, ratio outside
            [0, 1], or a generator on another device than ``device``.
        TypeError: ``image_size`` not an int or a pair of ints.
    """
    height, width = _pair(image_size, "image_size")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"networks/masking.py random_block_mask: batch_size must be an int >= 1, "
            f"got {batch_size!r}."
        )
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(
            f"networks/masking.py random_block_mask: block_size must be an int >= 1, "
            f"got {block_size!r}."
        )
    if height < 1 or width < 1 or height % block_size or width % block_size:
        raise ValueError(
            f"networks/masking.py random_block_mask: image_size (H, W) = ({height}, {width}) must "
            f"be positive and divisible by block_size={block_size} (e.g. 224 with block 32 gives "
            f"a 7 x 7 grid)."
        )
    if not 0.0 <= float(ratio) <= 1.0:
        raise ValueError(
            f"networks/masking.py random_block_mask: ratio must be in [0, 1], got {ratio!r}."
        )
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)
    if generator is not None and not _same_device(generator.device, device):
        raise ValueError(
            f"networks/masking.py random_block_mask: the generator lives on {generator.device} "
            f"but the mask is drawn on {device}; create the generator with "
            f"torch.Generator(device={str(device)!r})."
        )

    grid_h, grid_w = height // block_size, width // block_size
    num_blocks = grid_h * grid_w
    num_masked = num_masked_blocks(num_blocks, ratio)

    scores = torch.rand(batch_size, num_blocks, generator=generator, device=device)
    chosen = scores.argsort(dim=1)[:, :num_masked]
    block_mask = torch.zeros(batch_size, num_blocks, dtype=torch.bool, device=device)
    block_mask.scatter_(1, chosen, True)
    block_mask = block_mask.view(batch_size, grid_h, 1, grid_w, 1)
    return block_mask.expand(batch_size, grid_h, block_size, grid_w, block_size).reshape(
        batch_size, height, width
    )


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    # "cuda" and "cuda:0" name the same device when the current device is 0; compare indices
    # only when both are given.
    return a.index is None or b.index is None or a.index == b.index


def check_mask(mask: Tensor, images: Tensor, where: str) -> None:
    """Check that ``mask`` is a B x H x W bool mask matching ``images`` (B x C x H x W).

    Only shapes and dtypes are inspected, never values, so the check is free under
    ``torch.compile`` and does not synchronise with the device.

    Args:
        mask: the caller's mask, expected bool of shape B x H x W.
        images: the network input, B x C x H x W.
        where: prefix naming the caller for the error message.

    Raises:
        ValueError: wrong shape.
        TypeError: wrong dtype.
    """
    expected = (images.shape[0], images.shape[2], images.shape[3])
    if mask.ndim != 3 or tuple(mask.shape) != expected:
        raise ValueError(
            f"{where}: mask must be a B x H x W bool tensor at input resolution, expected shape "
            f"{expected} for input {tuple(images.shape)}, got {tuple(mask.shape)}."
        )
    if mask.dtype != torch.bool:
        raise TypeError(
            f"{where}: mask must have dtype torch.bool (True = masked), got {mask.dtype}."
        )


def downsample_mask(mask: Tensor, factor: int) -> Tensor:
    """Bring a pixel mask to a coarser grid: a cell is masked if any of its pixels is masked.

    With block masks aligned to the grid (32-pixel blocks, 4-pixel Swin patches) every cell is
    either fully masked or fully visible, so "any" and "all" agree; "any" guarantees that no pixel
    of a masked region reaches the masked stream otherwise.

    Args:
        mask: bool tensor B x H x W; H and W divisible by ``factor``.
        factor: cell side in pixels (the Swin patch size).

    Returns:
        Bool tensor B x H/factor x W/factor.

    Raises:
        ValueError: H or W not divisible by ``factor``.
    """
    batch, height, width = mask.shape
    if height % factor or width % factor:
        raise ValueError(
            f"networks/masking.py downsample_mask: mask size ({height}, {width}) is not divisible "
            f"by factor {factor}."
        )
    cells = mask.reshape(batch, height // factor, factor, width // factor, factor)
    return cells.any(dim=4).any(dim=2)
