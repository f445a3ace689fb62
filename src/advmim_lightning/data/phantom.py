"""A procedural, ACDC-like cardiac MRI phantom (short-axis stacks with RV, myocardium, LV).

Each case is a short-axis stack of ``num_slices`` slices from base to apex:

- left ventricle (label 3): an elliptic blood pool that shrinks towards the apex, with dark
  papillary muscles inside it (labeled LV, as in ACDC);
- myocardium (label 2): a ring of random thickness around the LV;
- right ventricle (label 1): a crescent against the septum, on the image left give or take a
  random angle, shrinking faster than the LV towards the apex and sometimes absent there;
- background: body outline with a bright fat rim, dark lungs, a liver-like region, a bright
  aorta-like disk and an epicardial fat arc (both with blood- or fat-like intensities, so
  intensity alone does not segment the heart), smooth tissue texture.

Each case draws its own geometry, intensities and contrast (gamma), then gets a small blur
(partial volume), a smooth multiplicative bias field, Rician noise and a random global scale
(raw intensities like an MRI scanner's, so normalisation matters). Spacing is anisotropic:
in-plane 1.3 to 1.8 mm, slices 5 to 10 mm. Cases are a pure function of
``(seed, case index, domain)``.

**Domains.** ``domain="source"`` (the default) is the phantom above, bit for bit. The
``"target"`` domain is the same anatomy (the same labels, case by case) under another
acquisition, a hard domain gap as between T1- and T2-weighted MRI: the tissue intensities go
through a non-monotonic contrast mapping (:func:`target_contrast`: dark blood pools, bright
myocardium, fat and blood no longer alike), and the acquisition adds a stronger bias field
and more noise, drawn from a random stream of their own (so the anatomy's draws are
untouched). ``domain_strength`` in ``[0, 1]`` moves the target acquisition between the source
(0: the source images, bit for bit) and the full target (1, the default): the contrast mapping
is blended linearly with the identity, the extra bias field's amplitude and the extra noise's
log-factor are scaled by it.

The original array of a case is ``H x W x D`` (like a NIfTI short-axis stack); its affine is
``diag(s_in, s_in, s_slice, 1)`` and the slice axis is 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from advmim_lightning.data.phantom_cache import (
    phantom_cache_path,
    read_phantom_cache,
    write_phantom_cache,
)
from advmim_lightning.method.randomness import sample_seed

__all__ = [
    "PHANTOM_CLASS_NAMES",
    "PHANTOM_DOMAINS",
    "PhantomCase",
    "check_domain",
    "generate_phantom",
    "generate_phantom_case",
    "phantom_case_ids",
    "target_contrast",
]

PHANTOM_CLASS_NAMES = ["background", "RV", "Myo", "LV"]
PHANTOM_SLICE_AXIS = 2
_VERSION = 2
_TAG = 0x50484E54  # "PHNT"
_TARGET_TAG = 0x54524754  # "TRGT": the target domain's own acquisition draws
#: The phantom's acquisition domains (``"source"`` is the default phantom).
PHANTOM_DOMAINS = ("source", "target")
#: The target domain's contrast: tissue intensity (about [0, 1]) -> new intensity, piecewise
#: linear. Air and lungs stay dark; myocardium (0.15-0.38) and soft tissue turn bright; blood
#: (0.7-0.95) turns dark; fat (0.6-0.9) lands between. Non-monotonic, so no rescaling of a
#: source image gives a target image.
_TARGET_CONTRAST = (
    (0.0, 0.1, 0.3, 0.55, 0.8, 1.0),
    (0.0, 0.1, 0.85, 0.6, 0.15, 0.3),
)


@dataclass
class PhantomCase:
    """One generated case.

    Attributes:
        case_id: ``"patientNNN"`` (1-based).
        image: ``H x W x D`` float32 raw intensities.
        label: ``H x W x D`` uint8 labels (0 background, 1 RV, 2 Myo, 3 LV).
        spacing: ``(s_in, s_in, s_slice)`` in mm, along the original axes.
        affine: ``4 x 4`` float64 ``diag(spacing, 1)``.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray


def phantom_case_ids(num_cases: int) -> list[str]:
    """Case ids ``patient001 .. patientNNN``."""
    return [f"patient{i + 1:03d}" for i in range(num_cases)]


def _ellipse(yy, xx, cy, cx, a, b, theta) -> np.ndarray:
    """Normalised squared radius (<= 1 inside the ellipse); arguments broadcast to D x H x W."""
    c, s = np.cos(theta), np.sin(theta)
    dy, dx = yy - cy, xx - cx
    u = (dx * c + dy * s) / np.maximum(a, 1e-6)
    v = (-dx * s + dy * c) / np.maximum(b, 1e-6)
    return u * u + v * v


def _smooth_field(
    rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, terms: int
) -> np.ndarray:
    """Smooth random field on the grid (sum of low-frequency cosines), in about ``[-1, 1]``."""
    size = yy.shape[-1]
    field = np.zeros(np.broadcast_shapes(yy.shape, xx.shape), dtype=np.float32)
    for _ in range(terms):
        freq = rng.uniform(0.5, 2.0) * 2 * math.pi / size
        direction = rng.uniform(0, 2 * math.pi)
        phase = rng.uniform(0, 2 * math.pi)
        arg = freq * (math.cos(direction) * xx + math.sin(direction) * yy) + phase
        field += np.cos(arg, dtype=np.float32) * np.float32(rng.uniform(0.5, 1.0))
    return field / max(float(np.abs(field).max()), 1e-6)


def target_contrast(image: np.ndarray) -> np.ndarray:
    """The target domain's intensity mapping of tissue intensities (float32, same shape)."""
    xs, ys = _TARGET_CONTRAST
    return np.interp(image, xs, ys).astype(np.float32)


def check_domain(domain: str, strength: float = 1.0) -> None:
    """Refuses a phantom domain other than :data:`PHANTOM_DOMAINS`, and a ``domain_strength``
    outside ``[0, 1]`` or other than 1 for the source domain (which has no strength)."""
    if domain not in PHANTOM_DOMAINS:
        raise ValueError(f"phantom.domain must be one of {PHANTOM_DOMAINS}, got {domain!r}")
    if isinstance(strength, bool) or not 0.0 <= strength <= 1.0:
        raise ValueError(f"phantom.domain_strength must be in [0, 1], got {strength!r}")
    if domain == "source" and strength != 1.0:
        raise ValueError(
            f"phantom.domain_strength={strength!r} applies to domain 'target' only; the source "
            "domain is the default phantom (set phantom.domain: target)"
        )


def generate_phantom_case(
    index: int,
    num_slices: int = 8,
    size: int = 128,
    seed: int = 0,
    heart_scale: float = 1.0,
    domain: str = "source",
    domain_strength: float = 1.0,
) -> PhantomCase:
    """Generates case ``index`` of the phantom.

    Args:
        index: 0-based case index.
        num_slices: Slices from base to apex (>= 1).
        size: In-plane size in pixels (>= 16).
        seed: Phantom seed.
        heart_scale: The heart's size in pixels relative to ACDC-like proportions (1.0), in
            ``[0.5, 1.6]``: ventricles, myocardium and the vessels near them grow by this
            factor and the in-plane spacing shrinks by it (a zoomed-in acquisition, the same
            heart in millimetres); the rest of the body keeps its size in pixels. The random
            draws are the same for every scale, so scale 1.0 is the default phantom.
        domain: ``"source"`` (the default phantom) or ``"target"``: the same case (same
            labels and spacing) under the target acquisition (see the module docstring).
        domain_strength: How far the target acquisition is from the source's, in ``[0, 1]``
            (1, the default, is the full target; 0 gives the source images). Target only.

    Returns:
        A :class:`PhantomCase`.

    Raises:
        ValueError: On a ``heart_scale``, ``domain`` or ``domain_strength`` out of range.
    """
    check_heart_scale(heart_scale)
    check_domain(domain, domain_strength)
    s = float(domain_strength)
    rng = np.random.default_rng(sample_seed(_TAG, _VERSION, seed, index))
    target = None
    if domain == "target":
        target = np.random.default_rng(sample_seed(_TARGET_TAG, _VERSION, seed, index))
    n, d_count = size, num_slices
    grid_y, grid_x = np.mgrid[0:n, 0:n].astype(np.float32)
    yy, xx = grid_y[None], grid_x[None]  # 1 x H x W, broadcast against per-slice parameters
    t = np.linspace(0.0, 1.0, d_count, dtype=np.float32) if d_count > 1 else np.zeros(1, np.float32)
    t = t[:, None, None]  # 0 at the base, 1 at the apex

    def inside(cy, cx, a, b, angle):
        return _ellipse(yy, xx, cy, cx, a, b, angle) <= 1.0

    # Geometry of the heart (the centre drifts a little from base to apex).
    cy0 = n / 2 + rng.normal(0, 0.06 * n)
    cx0 = n / 2 + rng.normal(0, 0.06 * n)
    cy = cy0 + rng.normal(0, 0.02 * n) * t
    cx = cx0 + rng.normal(0, 0.02 * n) * t
    r0 = rng.uniform(0.065, 0.13) * n * heart_scale
    lv_a = r0 * (1 - rng.uniform(0.45, 0.65) * t**1.5)
    lv_b = lv_a * rng.uniform(0.8, 1.0)
    theta = rng.uniform(0, math.pi)
    if d_count > 2 and rng.random() < 0.4:  # apical cap: myocardium only
        lv_a = np.where(t >= 1.0, np.float32(0), lv_a)
        lv_b = np.where(t >= 1.0, np.float32(0), lv_b)
    wall = (
        rng.uniform(0.03, 0.05)
        * n
        * heart_scale
        * (1 + 0.05 * rng.standard_normal((d_count, 1, 1)))
    )
    wall = np.maximum(wall, 1.2).astype(np.float32)
    lv = inside(cy, cx, lv_a, lv_b, theta)
    epi = inside(cy, cx, lv_a + wall, lv_b + wall, theta)
    myo = epi & ~lv

    # Right ventricle: a crescent wrapped around the septum, shrinking towards the apex.
    phi = math.pi + rng.normal(0, 0.35)  # towards the image left
    rv_scale = np.clip(1 - rng.uniform(0.6, 1.0) * t**1.2, 0.0, 1.0)
    if d_count > 2 and rng.random() < 0.5:
        rv_scale = np.where(t >= 1.0, np.float32(0), rv_scale)
    reach = (r0 + wall) * rng.uniform(0.55, 0.85)
    rv_region = inside(
        cy + math.sin(phi) * reach,
        cx + math.cos(phi) * reach,
        (r0 + wall) * rng.uniform(0.7, 1.0) * rv_scale,
        (r0 + wall) * rng.uniform(1.25, 1.6) * rv_scale,
        phi,
    )
    rv = rv_region & ~inside(cy, cx, lv_a + wall + 1.5, lv_b + wall + 1.5, theta)
    heart = epi | rv_region

    label = np.zeros((d_count, n, n), dtype=np.uint8)
    label[rv] = 1
    label[myo] = 2
    label[lv] = 3

    # Intensities (about [0, 1] before the acquisition model).
    lv_int = rng.uniform(0.7, 0.95)
    rv_int = lv_int * rng.uniform(0.85, 1.05)
    myo_int = rng.uniform(0.15, 0.38)
    img = rng.uniform(0.25, 0.5) + 0.08 * _smooth_field(rng, yy, xx, 4)
    body = _ellipse(
        yy,
        xx,
        n / 2 + rng.normal(0, 0.02 * n),
        n / 2,
        rng.uniform(0.44, 0.49) * n,
        rng.uniform(0.36, 0.44) * n,
        rng.uniform(-0.2, 0.2),
    )
    img = np.where(body > 1.0, np.float32(0.02), img)
    rim = (body <= 1.0) & (body > rng.uniform(0.78, 0.86))
    img = np.where(rim, np.float32(rng.uniform(0.6, 0.85)), img)  # subcutaneous fat
    img = np.broadcast_to(img, (d_count, n, n))
    for side in (-1, 1):  # lungs
        lung = inside(
            cy0 - 0.1 * n + rng.normal(0, 0.02 * n),
            cx0 + side * rng.uniform(0.22, 0.3) * n,
            rng.uniform(0.09, 0.14) * n,
            rng.uniform(0.16, 0.22) * n,
            rng.uniform(-0.4, 0.4),
        )
        img = np.where(lung & ~heart, np.float32(rng.uniform(0.03, 0.1)), img)
    liver = inside(
        cy0 + rng.uniform(0.22, 0.3) * n,
        cx0 - rng.uniform(0.05, 0.2) * n,
        rng.uniform(0.15, 0.22) * n,
        rng.uniform(0.1, 0.15) * n,
        rng.uniform(0, math.pi),
    )
    img = np.where(liver & ~heart, np.float32(rng.uniform(0.4, 0.55)), img)
    # Epicardial fat on an arc around the heart (bright, fat-like).
    fat = inside(cy, cx, lv_a + wall + 2.5, lv_b + wall + 2.5, theta) & ~heart
    angle = np.mod(np.arctan2(yy - cy, xx - cx) - rng.uniform(0, 2 * math.pi), 2 * math.pi)
    fat &= angle < rng.uniform(1.0, 3.0)
    img = np.where(fat, np.float32(rng.uniform(0.65, 0.9)), img)
    # A bright aorta-like disk with blood intensity, away from the ventricles (a distractor).
    a_dir = phi + math.pi + rng.normal(0, 0.6)
    a_dist = (r0 + float(wall.mean())) * rng.uniform(1.6, 2.1)
    aorta = inside(
        cy0 + math.sin(a_dir) * a_dist, cx0 + math.cos(a_dir) * a_dist, 0.35 * r0, 0.35 * r0, 0.0
    )
    img = np.where(aorta & ~heart, np.float32(lv_int * rng.uniform(0.9, 1.05)), img)
    for _ in range(int(rng.integers(1, 4))):  # bright vessels / fat pads elsewhere in the body
        blob = inside(
            n / 2 + rng.uniform(-0.3, 0.3) * n,
            n / 2 + rng.uniform(-0.35, 0.35) * n,
            rng.uniform(0.02, 0.06) * n,
            rng.uniform(0.02, 0.06) * n,
            rng.uniform(0, math.pi),
        )
        img = np.where(blob & ~heart & (body <= 1.0), np.float32(rng.uniform(0.5, 0.95)), img)
    img = np.where(rv, np.float32(rv_int), img)
    img = np.where(myo, np.float32(myo_int), img)
    img = np.where(lv, np.float32(lv_int), img)
    # Papillary muscles: small dark blobs inside the LV pool (labeled LV, as in ACDC).
    for _ in range(2):
        pa = rng.uniform(0, 2 * math.pi)
        pap = inside(
            cy + math.sin(pa) * 0.55 * lv_a,
            cx + math.cos(pa) * 0.55 * lv_a,
            0.18 * lv_a,
            0.14 * lv_a,
            pa,
        )
        img = np.where(pap & lv & (t < 0.85), np.float32(myo_int * 1.2), img)

    if target is not None:  # another tissue contrast, before the acquisition
        img = target_contrast(img) if s == 1.0 else (1 - s) * img + s * target_contrast(img)

    # Acquisition: partial-volume blur, contrast, bias field, Rician noise, scanner scale.
    img = ndimage.gaussian_filter(img, sigma=(0, 0.7, 0.7), truncate=3.0)
    img = np.clip(img, 0, None) ** np.float32(rng.uniform(0.8, 1.25))
    img = img * np.exp(rng.uniform(0.2, 0.5) * _smooth_field(rng, yy, xx, 2))
    if target is not None:  # a stronger bias field of the target's coil
        img = img * np.exp(s * target.uniform(0.4, 0.7) * _smooth_field(target, yy, xx, 3))
    noise = rng.standard_normal((2, *img.shape), dtype=np.float32) * np.float32(
        rng.uniform(0.02, 0.09)
    )
    if target is not None:  # and more noise
        noise = noise * np.float32(target.uniform(1.5, 2.5) ** s)
    img = np.sqrt((img + noise[0]) ** 2 + noise[1] ** 2) * np.float32(rng.uniform(200.0, 1500.0))

    s_in = float(rng.uniform(1.3, 1.8)) / heart_scale
    s_slice = float(rng.uniform(5.0, 10.0))
    spacing = (s_in, s_in, s_slice)
    affine = np.diag([s_in, s_in, s_slice, 1.0])
    return PhantomCase(
        case_id=phantom_case_ids(index + 1)[index],
        image=np.ascontiguousarray(np.moveaxis(img, 0, PHANTOM_SLICE_AXIS), dtype=np.float32),
        label=np.ascontiguousarray(np.moveaxis(label, 0, PHANTOM_SLICE_AXIS)),
        spacing=spacing,
        affine=affine,
    )


def check_heart_scale(heart_scale: float) -> None:
    """Refuses a ``heart_scale`` outside ``[0.5, 1.6]`` (beyond 1.6 the heart leaves the image)."""
    if isinstance(heart_scale, bool) or not 0.5 <= heart_scale <= 1.6:
        raise ValueError(f"phantom.heart_scale must be in [0.5, 1.6], got {heart_scale!r}")


def generate_phantom(
    num_cases: int,
    num_slices: int = 8,
    size: int = 128,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    heart_scale: float = 1.0,
    domain: str = "source",
    domain_strength: float = 1.0,
) -> list[PhantomCase]:
    """Generates (or reads from a cache) the whole phantom.

    Args:
        num_cases: Number of cases (>= 1).
        num_slices: Slices per case (>= 1).
        size: In-plane size (>= 16).
        seed: Phantom seed.
        cache_dir: Folder for an ``.npz`` cache keyed by the arguments; None generates in memory.
        heart_scale: See :func:`generate_phantom_case`.
        domain: See :func:`generate_phantom_case`.
        domain_strength: See :func:`generate_phantom_case`.

    Returns:
        The cases in id order.

    Raises:
        ValueError: On arguments out of range.
    """
    if num_cases < 1 or num_slices < 1 or size < 16:
        raise ValueError(
            f"phantom needs num_cases >= 1, num_slices >= 1 and size >= 16, got "
            f"num_cases={num_cases}, num_slices={num_slices}, size={size}"
        )
    check_heart_scale(heart_scale)
    check_domain(domain, domain_strength)
    path = None
    if cache_dir is not None:
        path = phantom_cache_path(
            Path(cache_dir),
            version=_VERSION,
            num_cases=num_cases,
            num_slices=num_slices,
            size=size,
            seed=seed,
            heart_scale=heart_scale,
            domain=domain,
            domain_strength=domain_strength,
        )
        cached = read_phantom_cache(path, num_cases)
        if cached is not None:
            images, labels, spacings = cached
            return [
                PhantomCase(
                    case_id=case_id,
                    image=images[i],
                    label=labels[i],
                    spacing=tuple(float(s) for s in spacings[i]),  # type: ignore[arg-type]
                    affine=np.diag([*spacings[i], 1.0]),
                )
                for i, case_id in enumerate(phantom_case_ids(num_cases))
            ]
    cases = [
        generate_phantom_case(i, num_slices, size, seed, heart_scale, domain, domain_strength)
        for i in range(num_cases)
    ]
    if path is not None:
        write_phantom_cache(
            path,
            (
                np.stack([c.image for c in cases]),
                np.stack([c.label for c in cases]),
                np.array([c.spacing for c in cases], dtype=np.float64),
            ),
        )
    return cases
