"""Tests for advmim_lightning.evaluation.case_metrics and .metrics against hand-made volumes."""

from __future__ import annotations

import math

import pytest
import torch

from advmim_lightning.evaluation.case_metrics import METRIC_NAMES, compute_case_metrics
from advmim_lightning.evaluation.metrics import SegmentationMetrics

SHAPE = (8, 16, 16)


def cube(z0: int = 2, y0: int = 4, x0: int = 4, label: int = 1) -> torch.Tensor:
    """A 4 x 8 x 8 cube of ``label`` in an 8 x 16 x 16 volume."""
    volume = torch.zeros(SHAPE, dtype=torch.long)
    volume[z0 : z0 + 4, y0 : y0 + 8, x0 : x0 + 8] = label
    return volume


def test_metric_names():
    assert METRIC_NAMES == ("dice", "hd95", "asd", "nsd")


def test_perfect_prediction():
    label = cube()
    label[0:2, 0:3, 0:3] = 2
    table = compute_case_metrics(label.clone(), label, num_classes=3, spacing=(2.5, 1.0, 0.8))
    assert table.shape == (4, 2)
    assert table.dtype == torch.float64
    expected = torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    assert torch.equal(table, expected)


def test_shifted_cube_in_voxels():
    # Ground truth z in [2, 6), prediction z in [4, 8): overlap 2 of 4 slices -> Dice 0.5.
    # Surfaces (184 voxels each): the far face (64) lies 2 voxels from the other surface,
    # 28 + 36 voxels lie 1 away, the rest 0. So HD95 = 2, ASD = 2 * 192 / 368,
    # NSD(tol 1) = 2 * 120 / 368.
    table = compute_case_metrics(cube(z0=4), cube(z0=2), num_classes=2)
    dice, hd95, asd, nsd = table[:, 0].tolist()
    assert dice == pytest.approx(0.5)
    assert hd95 == pytest.approx(2.0)
    assert asd == pytest.approx(384 / 368, rel=1e-5)
    assert nsd == pytest.approx(240 / 368, rel=1e-5)
    # All surface distances are <= 2 voxels.
    relaxed = compute_case_metrics(cube(z0=4), cube(z0=2), num_classes=2, nsd_tolerance=2.0)
    assert relaxed[3, 0].item() == pytest.approx(1.0)


def test_anisotropic_spacing_scales_distances_along_the_right_axis():
    prediction, label = cube(z0=4), cube(z0=2)  # shifted 2 voxels along axis 0
    table = compute_case_metrics(prediction, label, num_classes=2, spacing=(2.5, 1.0, 1.0))
    assert table[0, 0].item() == pytest.approx(0.5)  # Dice ignores spacing
    assert table[1, 0].item() == pytest.approx(5.0)  # 2 voxels x 2.5 mm
    # Far face: 64 x 5.0; next ring 28 x 2.5; inner face voxels now reach a lateral edge
    # 1, 2 or 3 mm away in-plane (20, 12, 4 voxels, capped at 2.5); both directions alike.
    assert table[2, 0].item() == pytest.approx(2 * (64 * 5.0 + 28 * 2.5 + 54) / 368, rel=1e-5)

    # The same spacing with the shift along the last axis leaves HD95 at 2 mm ...
    along_x = compute_case_metrics(cube(x0=6), cube(x0=4), num_classes=2, spacing=(2.5, 1.0, 1.0))
    assert along_x[1, 0].item() == pytest.approx(2.0)
    # ... and spacing on the last axis scales it.
    scaled_x = compute_case_metrics(cube(x0=6), cube(x0=4), num_classes=2, spacing=(1.0, 1.0, 2.5))
    assert scaled_x[1, 0].item() == pytest.approx(5.0)


@pytest.mark.parametrize("spacing", [None, (2.5, 1.0, 1.0)])
def test_empty_mask_rules(spacing):
    label = cube(label=2)  # class 2 present in label only
    prediction = torch.zeros(SHAPE, dtype=torch.long)
    prediction[0:2, 0:4, 0:4] = 3  # class 3 present in prediction only; class 1 in neither
    # class 4 present in both (perfect)
    label[6:8, 12:16, 12:16] = 4
    prediction[6:8, 12:16, 12:16] = 4
    table = compute_case_metrics(prediction, label, num_classes=5, spacing=spacing)
    unit = spacing or (1.0, 1.0, 1.0)
    diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(SHAPE, unit, strict=True)))
    assert diagonal == pytest.approx(24.0 if spacing is None else math.sqrt(912))
    assert torch.isfinite(table).all()
    assert table[:, 0].tolist() == [1.0, 0.0, 0.0, 1.0]  # both empty
    assert table[:, 1].tolist() == pytest.approx([0.0, diagonal, diagonal, 0.0])  # pred empty
    assert table[:, 2].tolist() == pytest.approx([0.0, diagonal, diagonal, 0.0])  # gt empty
    assert table[:, 3].tolist() == [1.0, 0.0, 0.0, 1.0]  # both present, perfect


def test_background_only_volume_and_2d_input():
    empty = torch.zeros(SHAPE, dtype=torch.uint8)
    table = compute_case_metrics(empty, empty, num_classes=4)
    assert torch.equal(table, torch.tensor([[1.0] * 3, [0.0] * 3, [0.0] * 3, [1.0] * 3]).double())
    image = cube()[3]
    assert compute_case_metrics(image, image, num_classes=2)[:, 0].tolist() == [1.0, 0, 0, 1.0]


def test_compute_case_metrics_rejects_bad_inputs():
    label = cube()
    with pytest.raises(ValueError, match=r"equal shape .* got \(8, 16, 16\) and \(8, 16, 15\)"):
        compute_case_metrics(label, label[..., :15], num_classes=2)
    with pytest.raises(ValueError, match=r"prediction values must lie in \[0, 2\), found range"):
        compute_case_metrics(label * 2, label, num_classes=2)
    with pytest.raises(TypeError, match="label must hold integer class indices"):
        compute_case_metrics(label, label.float(), num_classes=2)
    with pytest.raises(ValueError, match=r"spacing must be 3 positive finite numbers"):
        compute_case_metrics(label, label, num_classes=2, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="spacing must be 3 positive finite numbers"):
        compute_case_metrics(label, label, num_classes=2, spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="spacing must be 3 positive finite numbers"):
        compute_case_metrics(label, label, num_classes=2, spacing=torch.ones(1, 3))
    assert compute_case_metrics(label, label, 2, spacing=torch.tensor([2.0, 1.0, 1.0]))[0, 0] == 1
    with pytest.raises(ValueError, match="num_classes must be >= 2, got 1"):
        compute_case_metrics(label, label, num_classes=1)
    with pytest.raises(ValueError, match="nsd_tolerance must be a finite number >= 0"):
        compute_case_metrics(label, label, num_classes=2, nsd_tolerance=-1.0)


def test_metric_names_subset_and_order():
    prediction, label = cube(z0=4), cube(z0=2)
    full = compute_case_metrics(prediction, label, num_classes=2)
    dice_only = compute_case_metrics(prediction, label, num_classes=2, metric_names=("dice",))
    assert dice_only.shape == (1, 1)
    assert dice_only[0, 0].item() == pytest.approx(0.5)
    reordered = compute_case_metrics(prediction, label, num_classes=2, metric_names=("nsd", "hd95"))
    assert torch.equal(reordered, full[[3, 1]])
    with pytest.raises(ValueError, match="metric_names must be a non-empty subset"):
        compute_case_metrics(prediction, label, num_classes=2, metric_names=("dice", "iou"))
    with pytest.raises(ValueError, match="metric_names must be a non-empty subset"):
        SegmentationMetrics(num_classes=2, metric_names=())


def two_class_cases():
    """(prediction, label) pairs with known tables for num_classes=3."""
    perfect = cube()
    perfect[0:2, 0:3, 0:3] = 2
    shifted_label = cube(z0=2)
    shifted_pred = cube(z0=4)  # class 1 Dice 0.5, HD95 2; class 2 absent in both
    return (perfect.clone(), perfect), (shifted_pred, shifted_label)


def test_segmentation_metrics_means_and_keys():
    metric = SegmentationMetrics(num_classes=3, class_names=["rv", "myo"])
    (p0, l0), (p1, l1) = two_class_cases()
    metric.update(p0, l0, case_index=0)
    metric.update(p1, l1, case_index=torch.tensor(1))
    result = metric.compute()
    expected_keys = {f"{m}_{k}" for m in METRIC_NAMES for k in ("mean", "rv", "myo")}
    assert set(result) == expected_keys
    assert all(v.ndim == 0 for v in result.values())
    assert result["dice_rv"].item() == pytest.approx(0.75)
    assert result["dice_myo"].item() == pytest.approx(1.0)  # both-empty counts as 1
    assert result["dice_mean"].item() == pytest.approx(0.875)
    assert result["hd95_rv"].item() == pytest.approx(1.0)
    assert result["hd95_mean"].item() == pytest.approx(0.5)
    assert result["nsd_rv"].item() == pytest.approx((1.0 + 240 / 368) / 2, rel=1e-5)
    indices, values = metric.per_case()
    assert indices.tolist() == [0, 1]
    assert indices.dtype == torch.int64
    assert values.shape == (2, 4, 2)
    assert values.dtype == torch.float64


def test_segmentation_metrics_default_names_and_spacing():
    metric = SegmentationMetrics(num_classes=2)
    metric.update(cube(z0=4), cube(z0=2), case_index=5, spacing=(2.5, 1.0, 1.0))
    result = metric.compute()
    assert set(result) == {f"{m}_{k}" for m in METRIC_NAMES for k in ("mean", "class1")}
    assert result["hd95_class1"].item() == pytest.approx(5.0)


def test_segmentation_metrics_dice_only():
    (p0, l0), (p1, l1) = two_class_cases()
    metric = SegmentationMetrics(3, ["rv", "myo"], metric_names=("dice",))
    metric.update(p0, l0, case_index=0)
    metric.update(p1, l1, case_index=1)
    result = metric.compute()
    assert set(result) == {"dice_mean", "dice_rv", "dice_myo"}
    assert result["dice_mean"].item() == pytest.approx(0.875)
    assert metric.per_case()[1].shape == (2, 1, 2)


def test_segmentation_metrics_drop_duplicate_case_indices_keeping_first():
    (p0, l0), (p1, l1) = two_class_cases()
    metric = SegmentationMetrics(num_classes=3)
    # A padded distributed sampler repeats a volume; keep the first entry per index (the repeat
    # is given a different prediction here to show which one is kept).
    metric.update(p1, l1, case_index=7)
    metric.update(p0, l0, case_index=3)
    metric.update(p0, l0, case_index=7)
    metric.update(p1, l1, case_index=3)
    indices, values = metric.per_case()
    assert indices.tolist() == [3, 7]
    assert values[0, 0].tolist() == [1.0, 1.0]  # case 3: first entry is the perfect one
    assert values[1, 0].tolist() == pytest.approx([0.5, 1.0])  # case 7: first is shifted
    assert metric.compute()["dice_class1"].item() == pytest.approx(0.75)


def test_segmentation_metrics_gathered_states_are_deduplicated():
    # Emulate two DDP ranks: rank 1 holds case 2 and a padded repeat of case 0.
    (p0, l0), (p1, l1) = two_class_cases()
    other = SegmentationMetrics(num_classes=3)
    other.update(p1, l1, case_index=2)
    other.update(p0, l0, case_index=0)
    other_states = {
        torch.int64: torch.cat(other.case_keys),
        torch.float64: torch.cat(other.values),
    }

    def fake_gather(tensor, group=None):
        return [tensor, other_states[tensor.dtype]]

    metric = SegmentationMetrics(
        num_classes=3, dist_sync_fn=fake_gather, distributed_available_fn=lambda: True
    )
    metric.update(p0, l0, case_index=0)
    metric.update(p1, l1, case_index=1)
    result = metric.compute()
    assert result["dice_class1"].item() == pytest.approx((1.0 + 0.5 + 0.5) / 3)
    indices, values = metric.per_case()
    assert indices.tolist() == [0, 1, 2]
    assert values.shape == (3, 4, 2)
    # Local states are restored after synchronisation.
    assert len(metric.case_keys) == 2


def test_segmentation_metrics_empty_state_raises_and_reset():
    metric = SegmentationMetrics(num_classes=3)
    with pytest.warns(UserWarning, match="called before the ``update``"):
        with pytest.raises(RuntimeError, match="no case was scored"):
            metric.compute()
    with pytest.raises(RuntimeError, match="no case was scored"):
        metric.per_case()
    metric.update(cube(), cube(), case_index=0)
    assert metric.compute()["dice_mean"].item() == 1.0
    metric.reset()
    with pytest.raises(RuntimeError, match="no case was scored"):
        metric.per_case()


def test_segmentation_metrics_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_classes must be an int >= 2, got 1"):
        SegmentationMetrics(num_classes=1)
    with pytest.raises(ValueError, match=r"must name the 3 foreground classes 1\.\.3, got 2 names"):
        SegmentationMetrics(num_classes=4, class_names=["rv", "myo"])
    with pytest.raises(ValueError, match="non-empty and unique"):
        SegmentationMetrics(num_classes=3, class_names=["rv", "rv"])
    with pytest.raises(ValueError, match="nsd_tolerance must be a finite number >= 0"):
        SegmentationMetrics(num_classes=3, nsd_tolerance=float("nan"))


_DDP_SCRIPT = """
import json, sys
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from advmim_lightning.evaluation.metrics import SegmentationMetrics


def cube(z0):
    volume = torch.zeros(8, 16, 16, dtype=torch.long)
    volume[z0 : z0 + 4, 4:12, 4:12] = 1
    return volume


def worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=2)
    metric = SegmentationMetrics(num_classes=3)
    perfect, shifted = (cube(2), cube(2)), (cube(4), cube(2))
    # Three cases over two ranks with a padded sampler: rank 1 repeats case 0.
    cases = [(perfect, 0), (shifted, 2)] if rank == 0 else [(shifted, 1), (perfect, 0)]
    for (prediction, label), index in cases:
        metric.update(prediction, label, case_index=index)
    dice = metric.compute()["dice_class1"].item()
    indices, values = metric.per_case()
    with open(f"{out_dir}/rank{rank}.json", "w") as f:
        json.dump({"dice": dice, "indices": indices.tolist(), "shape": list(values.shape)}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(worker, args=(sys.argv[1], sys.argv[2]), nprocs=2, join=True)
"""


@pytest.mark.slow
def test_segmentation_metrics_real_gloo_ddp(tmp_path):
    """Two real gloo processes: states are gathered and the padded repeat is dropped."""
    import json
    import subprocess
    import sys

    script = tmp_path / "ddp_metrics.py"
    script.write_text(_DDP_SCRIPT)
    subprocess.run(
        [sys.executable, str(script), str(tmp_path / "init"), str(tmp_path)],
        check=True,
        timeout=120,
    )
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["indices"] == [0, 1, 2]
        assert result["shape"] == [3, 4, 2]
        assert result["dice"] == pytest.approx((1.0 + 0.5 + 0.5) / 3)


def surface_distances(result, reference, spacing):
    """medpy's ``__surface_distances`` rebuilt from SciPy: an independent reference.

    Surfaces are mask XOR its erosion (connectivity 1); distances from ``result``'s surface to
    ``reference``'s by the Euclidean distance transform with ``sampling=spacing``.
    """
    import numpy as np
    from scipy import ndimage

    footprint = ndimage.generate_binary_structure(result.ndim, 1)
    result_border = result ^ ndimage.binary_erosion(result, structure=footprint, iterations=1)
    reference_border = reference ^ ndimage.binary_erosion(
        reference, structure=footprint, iterations=1
    )
    distance = ndimage.distance_transform_edt(~reference_border, sampling=spacing)
    return np.asarray(distance[result_border], dtype=np.float64)


def ball(shape, centre, radius):
    """A boolean ball of ``radius`` voxels around ``centre`` (voxel coordinates)."""
    import numpy as np

    grids = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True)) <= radius**2


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy.*:FutureWarning")
@pytest.mark.parametrize("spacing", [None, (2.5, 1.0, 0.8), (1.0, 0.7, 1.3)])
def test_hd95_asd_nsd_equal_medpy_definitions_with_a_distant_false_positive(spacing):
    import numpy as np
    from monai.metrics import compute_hausdorff_distance

    shape = (14, 40, 36)
    label = ball(shape, (7, 14, 14), 6.0)
    prediction = ball(shape, (7, 15, 13), 6.0)  # shifted by one voxel in-plane
    blob = np.zeros(shape, dtype=bool)
    blob[0:2, 37:40, 32:36] = True  # distant false positive touching the border, all surface
    prediction |= blob
    unit = spacing or (1.0, 1.0, 1.0)
    to_label = surface_distances(prediction, label, unit)
    to_prediction = surface_distances(label, prediction, unit)
    pooled = np.hstack((to_label, to_prediction))
    expected_hd95 = np.percentile(pooled, 95)  # medpy's hd95
    expected_asd = to_label.mean()  # medpy's asd(prediction, label)
    expected_nsd = (pooled <= 1.0).sum() / pooled.size

    table = compute_case_metrics(
        torch.from_numpy(prediction.astype(np.int64)),
        torch.from_numpy(label.astype(np.int64)),
        num_classes=2,
        spacing=spacing,
    )
    assert table[1, 0].item() == pytest.approx(expected_hd95, rel=1e-6)
    assert table[2, 0].item() == pytest.approx(expected_asd, rel=1e-6)
    assert table[3, 0].item() == pytest.approx(expected_nsd, rel=1e-6)

    # The blob is over 5 % of the predicted surface but under 5 % of both surfaces together,
    # so the two definitions of HD95 differ, and so do asd and the symmetric mean.
    assert 0.05 * to_label.size < blob.sum() < 0.05 * pooled.size
    monai_max_directed = compute_hausdorff_distance(
        torch.from_numpy(prediction)[None, None].float(),
        torch.from_numpy(label)[None, None].float(),
        percentile=95,
        spacing=spacing,
    ).item()
    assert monai_max_directed > 2.0 * expected_hd95
    assert expected_asd > 1.2 * pooled.mean()


def test_hd95_pools_both_directions_in_2d_and_per_class():
    import numpy as np

    # Class 1: a square and a prediction with an extra distant pixel cluster; class 2: a
    # prediction shrunk by one pixel on one side. Both are scored in one call, per class.
    label = np.zeros((48, 40), dtype=np.int64)
    label[10:30, 8:28] = 1
    label[34:44, 30:38] = 2
    prediction = label.copy()
    prediction[1:4, 36:39] = 1
    prediction[34, 30:38] = 0
    table = compute_case_metrics(
        torch.from_numpy(prediction), torch.from_numpy(label), num_classes=3, spacing=(0.5, 2.0)
    )
    for column, cls in enumerate((1, 2)):
        p, g = prediction == cls, label == cls
        to_label = surface_distances(p, g, (0.5, 2.0))
        pooled = np.hstack((to_label, surface_distances(g, p, (0.5, 2.0))))
        assert table[1, column].item() == pytest.approx(np.percentile(pooled, 95), rel=1e-6)
        assert table[2, column].item() == pytest.approx(to_label.mean(), rel=1e-6)


def two_cubes(z0: int, wide: tuple[int, int, int] = (8, 16, 32)) -> torch.Tensor:
    """Class 1: a 4 x 8 x 8 cube at x 4..12; class 2: the same cube at x 20..28."""
    volume = torch.zeros(wide, dtype=torch.long)
    volume[z0 : z0 + 4, 4:12, 4:12] = 1
    volume[z0 : z0 + 4, 4:12, 20:28] = 2
    return volume


def test_per_class_nsd_tolerance_in_voxels():
    # Each class: ground truth z in [2, 6), prediction z in [4, 8) (as in the shifted-cube
    # test): 240 of the 368 pooled surface distances are <= 1 voxel, all are <= 2.
    prediction, label = two_cubes(4), two_cubes(2)
    scalar = compute_case_metrics(prediction, label, num_classes=3, nsd_tolerance=1.0)
    assert scalar[3].tolist() == pytest.approx([240 / 368, 240 / 368], rel=1e-6)
    per_class = compute_case_metrics(prediction, label, num_classes=3, nsd_tolerance=(1.0, 2.0))
    assert per_class[3].tolist() == pytest.approx([240 / 368, 1.0], rel=1e-6)
    swapped = compute_case_metrics(prediction, label, 3, nsd_tolerance=torch.tensor([2.0, 1.0]))
    assert swapped[3].tolist() == pytest.approx([1.0, 240 / 368], rel=1e-6)
    # Dice, HD95 and ASD do not depend on the tolerance.
    assert torch.equal(per_class[:3], scalar[:3])
    # The same value for every class equals the scalar (default numbers do not move).
    assert torch.equal(compute_case_metrics(prediction, label, 3, nsd_tolerance=[1.0, 1.0]), scalar)
    assert torch.equal(compute_case_metrics(prediction, label, 3), scalar)


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy.*:FutureWarning")
def test_per_class_nsd_tolerance_in_mm_matches_scipy_reference():
    import numpy as np

    # ACDC-like: three classes, tolerances 5, 3, 3 mm, anisotropic spacing.
    spacing = (2.5, 1.0, 0.8)
    shape = (8, 16, 48)
    label = torch.zeros(shape, dtype=torch.long)
    prediction = torch.zeros(shape, dtype=torch.long)
    for c, x0 in ((1, 4), (2, 20), (3, 36)):
        label[2:6, 4:12, x0 : x0 + 8] = c
        prediction[3:7, 5:13, x0 + c : x0 + c + 8] = c  # shifted along all three axes
    tolerances = (5.0, 3.0, 3.0)
    table = compute_case_metrics(prediction, label, 4, spacing=spacing, nsd_tolerance=tolerances)
    # 1.0, 0.995, 0.951 here; at 1 mm every class is near 0.4-0.55.
    assert table[3, 2].item() < table[3, 1].item() < table[3, 0].item() == 1.0
    for c, tolerance in zip((1, 2, 3), tolerances, strict=True):
        p, g = (prediction == c).numpy(), (label == c).numpy()
        pooled = np.concatenate(
            [surface_distances(p, g, spacing), surface_distances(g, p, spacing)]
        )
        expected = float((pooled <= tolerance).mean())
        assert table[3, c - 1].item() == pytest.approx(expected, rel=1e-6)


def test_nsd_zero_below_dice_published_rule():
    # Class 1: label z [0, 4), prediction z [4, 8): touching, no overlap -> Dice 0 but
    # the facing surfaces lie 1 voxel apart, so NSD(tol 1) > 0. Class 2: shifted by 2 -> Dice 0.5.
    label = torch.zeros(8, 16, 32, dtype=torch.long)
    prediction = torch.zeros_like(label)
    label[0:4, 4:12, 4:12] = 1
    prediction[4:8, 4:12, 4:12] = 1
    label[2:6, 4:12, 20:28] = 2
    prediction[4:8, 4:12, 20:28] = 2
    measured = compute_case_metrics(prediction, label, num_classes=3)
    assert measured[0].tolist() == pytest.approx([0.0, 0.5])
    assert measured[3, 0].item() > 0.0
    assert measured[3, 1].item() == pytest.approx(240 / 368, rel=1e-6)

    published = compute_case_metrics(prediction, label, num_classes=3, nsd_zero_below_dice=0.2)
    assert published[3].tolist() == pytest.approx([0.0, 240 / 368], rel=1e-6)
    assert torch.equal(published[:3], measured[:3])  # only NSD changes
    # Strictly below: Dice 0.5 is kept at threshold 0.5 and zeroed above it.
    assert compute_case_metrics(prediction, label, 3, nsd_zero_below_dice=0.5)[3, 1].item() > 0
    assert compute_case_metrics(prediction, label, 3, nsd_zero_below_dice=0.51)[3, 1].item() == 0
    # Dice is computed for the rule even when it is not reported.
    nsd_only = compute_case_metrics(
        prediction, label, 3, metric_names=("nsd",), nsd_zero_below_dice=0.2
    )
    assert nsd_only.shape == (1, 2)
    assert nsd_only[0].tolist() == pytest.approx([0.0, 240 / 368], rel=1e-6)
    # Empty-mask rule unchanged: both empty -> NSD 1 (Dice 1), one empty -> NSD 0.
    empty = compute_case_metrics(
        torch.zeros_like(label), torch.zeros_like(label), 3, None, 1.0, nsd_zero_below_dice=0.2
    )
    assert empty[3].tolist() == [1.0, 1.0]


def test_segmentation_metrics_per_class_tolerance_and_dice_rule():
    label = torch.zeros(8, 16, 32, dtype=torch.long)
    prediction = torch.zeros_like(label)
    label[0:4, 4:12, 4:12] = 1
    prediction[4:8, 4:12, 4:12] = 1  # Dice 0, NSD(1) > 0
    label[2:6, 4:12, 20:28] = 2
    prediction[4:8, 4:12, 20:28] = 2  # Dice 0.5, NSD(1) = 240/368, NSD(2) = 1
    metric = SegmentationMetrics(
        3, ["rv", "myo"], nsd_tolerance=[1.0, 2.0], nsd_zero_below_dice=0.2
    )
    assert metric.nsd_tolerances == (1.0, 2.0)
    assert metric.nsd_tolerance == (1.0, 2.0)
    assert metric.nsd_zero_below_dice == 0.2
    metric.update(prediction, label, case_index=0)
    result = metric.compute()
    assert result["nsd_rv"].item() == 0.0
    assert result["nsd_myo"].item() == pytest.approx(1.0)
    assert result["nsd_mean"].item() == pytest.approx(0.5)
    default = SegmentationMetrics(3)
    assert default.nsd_tolerance == 1.0 and default.nsd_zero_below_dice is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"nsd_tolerance": [5.0, 3.0]},
            r"one value per foreground class 1\.\.3 \(3 values\), got 2",
        ),
        ({"nsd_tolerance": [5.0, -3.0, 3.0]}, r"finite number >= 0, got -3\.0 \(class 2\)"),
        ({"nsd_tolerance": [5.0, 3.0, float("inf")]}, r"got inf \(class 3\)"),
        ({"nsd_tolerance": [5.0, "a", 3.0]}, r"got 'a' \(class 2\)"),
        ({"nsd_tolerance": "5"}, r"or 3 such numbers"),
        ({"nsd_zero_below_dice": 1.5}, r"nsd_zero_below_dice must be None or a number in \[0, 1\]"),
        ({"nsd_zero_below_dice": -0.1}, r"got -0\.1"),
    ],
)
def test_nsd_options_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SegmentationMetrics(num_classes=4, **kwargs)
    with pytest.raises(ValueError, match=match):
        compute_case_metrics(cube(), cube(), num_classes=4, **kwargs)
