"""The procedural phantom: deterministic, labeled, anisotropic, varied, cacheable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from advmim_lightning.data.cache_files import CacheRebuiltWarning
from advmim_lightning.data.phantom import generate_phantom, generate_phantom_case
from advmim_lightning.data.phantom_cache import write_phantom_cache


def test_deterministic_by_seed() -> None:
    a, b = generate_phantom_case(2, 4, 32, seed=1), generate_phantom_case(2, 4, 32, seed=1)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    assert not np.array_equal(a.image, generate_phantom_case(2, 4, 32, seed=2).image)
    assert not np.array_equal(a.label, generate_phantom_case(3, 4, 32, seed=1).label)


def test_case_content_and_geometry() -> None:
    case = generate_phantom_case(0, num_slices=6, size=64)
    assert case.case_id == "patient001"
    assert case.image.shape == (64, 64, 6) and case.image.dtype == np.float32
    assert case.label.shape == (64, 64, 6) and case.label.dtype == np.uint8
    assert set(np.unique(case.label[..., 0]).tolist()) == {0, 1, 2, 3}  # base: all structures
    assert np.isfinite(case.image).all() and case.image.max() > 100  # scanner-like scale
    s_in, s_in2, s_slice = case.spacing
    assert s_in == s_in2 and 1.3 <= s_in <= 1.8 and 5.0 <= s_slice <= 10.0
    np.testing.assert_allclose(case.affine, np.diag([s_in, s_in, s_slice, 1.0]))
    lv_area = (case.label == 3).sum(axis=(0, 1))
    assert lv_area[0] > lv_area[-2]  # the LV shrinks from base to apex
    # Blood (LV) is brighter than myocardium, but not separable by intensity alone from the
    # background (fat, aorta): some background voxels are at least as bright as the LV mean.
    lv_mean = case.image[case.label == 3].mean()
    assert case.image[case.label == 2].mean() < lv_mean
    assert (case.image[case.label == 0] >= lv_mean).sum() > 0.2 * (case.label == 3).sum()


def test_cases_vary() -> None:
    cases = generate_phantom(8, num_slices=3, size=48)
    centers = [np.argwhere(c.label[..., 0] == 3).mean(axis=0) for c in cases]
    areas = [(c.label == 3).sum() for c in cases]
    scales = [c.image.max() for c in cases]
    assert np.std([c[0] for c in centers]) > 1.0 and np.std([c[1] for c in centers]) > 1.0
    assert max(areas) > 1.3 * min(areas) and max(scales) > 1.5 * min(scales)
    assert len({c.spacing for c in cases}) == 8


def test_cache(tmp_path: Path) -> None:
    first = generate_phantom(3, 2, 32, seed=5, cache_dir=tmp_path)
    files = list(tmp_path.glob("phantom_*.npz"))
    assert len(files) == 1
    second = generate_phantom(3, 2, 32, seed=5, cache_dir=tmp_path)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.label, b.label)
        assert a.spacing == b.spacing and a.case_id == b.case_id


def test_a_cache_with_too_few_cases_is_named_and_regenerated(tmp_path: Path) -> None:
    """A cache file whose manifest matches but which holds fewer cases than its name says (a
    file copied over another) is refused, named, and generated again."""
    cases = generate_phantom(3, 2, 32, seed=5, cache_dir=tmp_path)
    (path,) = tmp_path.glob("phantom_*.npz")
    two = generate_phantom(2, 2, 32, seed=5)
    write_phantom_cache(
        path,
        (
            np.stack([c.image for c in two]),
            np.stack([c.label for c in two]),
            np.array([c.spacing for c in two]),
        ),
    )
    with pytest.warns(CacheRebuiltWarning, match=rf"{path.name}.*holds 2 cases, expected 3"):
        again = generate_phantom(3, 2, 32, seed=5, cache_dir=tmp_path)
    assert len(again) == 3
    np.testing.assert_array_equal(again[2].image, cases[2].image)
    with np.load(path) as data:
        assert data["images"].shape[0] == 3


def test_heart_scale_enlarges_the_heart_only_and_one_is_the_default_phantom(
    tmp_path: Path,
) -> None:
    default = generate_phantom_case(4, 6, 96, seed=0)
    same = generate_phantom_case(4, 6, 96, seed=0, heart_scale=1.0)
    np.testing.assert_array_equal(default.image, same.image)
    np.testing.assert_array_equal(default.label, same.label)
    small = generate_phantom(6, 6, 96, seed=0)
    large = generate_phantom(6, 6, 96, seed=0, heart_scale=1.5)
    for a, b in zip(small, large, strict=True):
        # Areas grow by about 1.5 ** 2 = 2.25; the heart stays inside the image.
        ratio = (b.label > 0).sum() / (a.label > 0).sum()
        assert 1.8 < ratio < 2.7, ratio
        rim = np.concatenate([b.label[0], b.label[-1], b.label[:, 0], b.label[:, -1]])
        assert not rim.any()
        # A zoomed-in acquisition: the same heart in millimetres, finer pixels.
        assert b.spacing[0] == pytest.approx(a.spacing[0] / 1.5) and b.spacing[2] == a.spacing[2]
    # The cache tells the scales apart; the default keeps its file name.
    generate_phantom(2, 2, 32, cache_dir=tmp_path)
    generate_phantom(2, 2, 32, cache_dir=tmp_path, heart_scale=1.5)
    names = sorted(p.name for p in tmp_path.glob("phantom_*.npz"))
    assert len(names) == 2 and sum("-h1.5" in n for n in names) == 1
    for bad in (0.4, 1.7, True):
        with pytest.raises(
            ValueError, match=rf"phantom.heart_scale must be in \[0.5, 1.6\], got {bad}"
        ):
            generate_phantom_case(0, 2, 32, heart_scale=bad)


def test_the_target_domain_is_the_same_anatomy_under_another_contrast(tmp_path: Path) -> None:
    from advmim_lightning.data.phantom import target_contrast

    for index in range(4):
        source = generate_phantom_case(index, 6, 64, seed=0)
        default = generate_phantom_case(index, 6, 64, seed=0, domain="source")
        np.testing.assert_array_equal(source.image, default.image)  # the default, bit for bit
        target = generate_phantom_case(index, 6, 64, seed=0, domain="target")
        np.testing.assert_array_equal(source.label, target.label)  # the same anatomy
        assert source.spacing == target.spacing and source.case_id == target.case_id
        assert np.isfinite(target.image).all() and target.image.min() >= 0
        # Blood pools bright in the source are darker than the myocardium in the target.
        src = source.image / np.median(source.image[source.label > 0])
        tgt = target.image / np.median(target.image[target.label > 0])
        lv, myo = source.label == 3, source.label == 2
        assert src[lv].mean() > src[myo].mean() and tgt[lv].mean() < tgt[myo].mean()
        # The target's coil: its bias field changes the image beyond the contrast.
        assert not np.allclose(tgt, target_contrast(src), atol=0.1)
    # The mapping is non-monotonic: up, then down, then up.
    steps = np.diff(target_contrast(np.linspace(0, 1, 101, dtype=np.float32)))
    assert (steps > 0).any() and (steps < 0).any() and steps[-1] > 0
    # The cache tells the domains apart; the default keeps its file name.
    generate_phantom(2, 2, 32, cache_dir=tmp_path)
    generate_phantom(2, 2, 32, cache_dir=tmp_path, domain="target")
    names = sorted(p.name for p in tmp_path.glob("phantom_*.npz"))
    assert len(names) == 2 and sum("-target" in n for n in names) == 1
    with pytest.raises(
        ValueError, match=r"phantom.domain must be one of \('source', 'target'\), got 'T2'"
    ):
        generate_phantom_case(0, 2, 32, domain="T2")


def test_the_domain_strength_moves_the_target_between_the_source_and_the_full_target(
    tmp_path: Path,
) -> None:
    from advmim_lightning.data.settings import PhantomSettings

    source = generate_phantom_case(1, 4, 48, seed=0)
    full = generate_phantom_case(1, 4, 48, seed=0, domain="target")
    # 1 is the default target, bit for bit; 0 is the source acquisition, bit for bit.
    one = generate_phantom_case(1, 4, 48, seed=0, domain="target", domain_strength=1.0)
    zero = generate_phantom_case(1, 4, 48, seed=0, domain="target", domain_strength=0.0)
    np.testing.assert_array_equal(one.image, full.image)
    np.testing.assert_array_equal(zero.image, source.image)

    # In between, the target's images move away from the source's as the strength grows.
    def distance(case) -> float:
        a = case.image / np.median(case.image[case.label > 0])
        b = source.image / np.median(source.image[source.label > 0])
        return float(np.abs(a - b).mean())

    steps = [0.0, 0.25, 0.5, 1.0]
    cases = [generate_phantom_case(1, 4, 48, 0, domain="target", domain_strength=s) for s in steps]
    distances = [distance(c) for c in cases]
    assert distances[0] == 0.0 and all(np.diff(distances) > 0), distances
    for case in cases:
        np.testing.assert_array_equal(case.label, source.label)
    # Each strength has its own cache file; the full target keeps its name.
    generate_phantom(2, 2, 32, cache_dir=tmp_path, domain="target")
    generate_phantom(2, 2, 32, cache_dir=tmp_path, domain="target", domain_strength=0.5)
    names = sorted(p.name for p in tmp_path.glob("phantom_*.npz"))
    assert len(names) == 2 and sum("-target-s0.5" in n for n in names) == 1
    for bad in (-0.1, 1.5, True):
        with pytest.raises(
            ValueError, match=rf"phantom.domain_strength must be in \[0, 1\], got {bad}"
        ):
            generate_phantom_case(0, 2, 32, domain="target", domain_strength=bad)
    with pytest.raises(
        ValueError,
        match=r"phantom.domain_strength=0.5 applies to domain 'target' only; the source domain",
    ):
        PhantomSettings(domain_strength=0.5)
    assert PhantomSettings(domain="target", domain_strength=0.5).domain_strength == 0.5
