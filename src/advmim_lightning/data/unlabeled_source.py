"""A second, unlabeled data source: unlabeled images from another folder, site or modality.

The data module's main source gives the labeled pool. A second source, declared unlabeled,
gives the unlabeled pool (``unlabeled_pool="second"``) or adds to the main source's
(``"both"``); its labels are never read for training. Validation and test use the main
source's split, or the second source's labeled split (``eval_source="second"``), as in the
public AdvMIM code's FLARE25 setting: labeled CT translated to MRI style, unlabeled real MRI,
tested on MRI (``docs/domain-adaptation.md``).

Each source normalises its own volumes with its own
:class:`~advmim_lightning.data.settings.SourceSettings` (CT windowing and MRI z-scoring never
leak into each other). Both must give the same image channels and classes; what does not
agree is refused here, naming both sources.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from advmim_lightning.data.acdc import ACDCSource
from advmim_lightning.data.arguments import check_choice
from advmim_lightning.data.cases import CaseSplit
from advmim_lightning.data.image_folder import ImageFolderSource
from advmim_lightning.data.nifti import NiftiSource
from advmim_lightning.data.phantom_source import PhantomSource
from advmim_lightning.data.settings import PhantomSettings, SecondPhantomSettings, SourceSettings
from advmim_lightning.data.source import DataSource, TrainingPools
from advmim_lightning.data.validation import DataValidationError

__all__ = [
    "EVAL_SOURCES",
    "UNLABELED_LAYOUTS",
    "UNLABELED_POOLS",
    "bind_unlabeled_source",
    "merge_pools",
    "refuse_labeled_cases_of",
    "second_source",
    "unlabeled_source_for",
]

#: ``unlabeled_layout=`` name -> the source class of the second source.
UNLABELED_LAYOUT_SOURCES: dict[str, type[DataSource]] = {
    "acdc": ACDCSource,
    "nifti": NiftiSource,
    "images": ImageFolderSource,
    "phantom": PhantomSource,
}
UNLABELED_LAYOUTS = tuple(UNLABELED_LAYOUT_SOURCES)
#: Where the unlabeled pool comes from: the second source alone, or both sources.
UNLABELED_POOLS = ("second", "both")
#: Whose split validation and test use: the main source's or the second source's.
EVAL_SOURCES = ("main", "second")


def unlabeled_source_for(
    layout: str,
    root: str | None,
    settings: SourceSettings,
    phantom: PhantomSettings | SecondPhantomSettings | None,
    main_phantom: PhantomSettings,
) -> DataSource:
    """Builds the second source of an ``unlabeled_layout``.

    Args:
        layout: ``"acdc"``, ``"nifti"``, ``"images"`` (:class:`ImageFolderSource` of ``root``
            itself) or ``"phantom"``.
        root: Its root (acdc, nifti, images).
        settings: Its own source settings (normalisation, split, cache).
        phantom: Its phantom (phantom): a whole :class:`PhantomSettings`, or changes to the
            default second phantom (:class:`SecondPhantomSettings`); None: that default, the
            main source's phantom in the target domain with the next phantom seed (other
            patients under another acquisition).
        main_phantom: The main source's phantom settings.

    Raises:
        ValueError: On an unknown layout or a missing root.
    """
    check_choice("unlabeled_layout", layout, UNLABELED_LAYOUTS)
    if layout == "phantom":
        if not isinstance(phantom, PhantomSettings):
            phantom = (phantom or SecondPhantomSettings()).resolve(main_phantom)
        return PhantomSource(phantom, settings)
    if not root:
        raise ValueError(
            f"unlabeled_root is required for unlabeled_layout={layout!r}, got {root!r}"
        )
    return UNLABELED_LAYOUT_SOURCES[layout](root, settings=settings)  # type: ignore[call-arg]


def second_source(
    source: DataSource | None,
    layout: str | None,
    root: str | None,
    settings: SourceSettings,
    phantom: PhantomSettings | SecondPhantomSettings | None,
    main_phantom: PhantomSettings,
) -> DataSource | None:
    """The data module's second source: ``unlabeled_source`` itself, the one its
    ``unlabeled_layout`` arguments describe (:func:`unlabeled_source_for`), or None.

    Args:
        source: ``unlabeled_source``, a source object of the user's.
        layout, root, settings, phantom: ``unlabeled_layout``, ``unlabeled_root``,
            ``unlabeled_settings`` and ``unlabeled_phantom``.
        main_phantom: The main source's phantom settings.

    Raises:
        TypeError: If ``source`` is not a :class:`DataSource`.
        ValueError: On ``source`` next to the layout arguments, or those arguments without
            ``layout``.
    """
    given = [
        name
        for name, value, default in (
            ("unlabeled_layout", layout, None),
            ("unlabeled_root", root, None),
            ("unlabeled_settings", settings, SourceSettings()),
            ("unlabeled_phantom", phantom, None),
        )
        if value != default
    ]
    if source is not None:
        if not isinstance(source, DataSource):
            raise TypeError(
                f"unlabeled_source must be a DataSource (advmim_lightning.data.source."
                f"DataSource), got {type(source).__name__}"
            )
        if given:
            raise ValueError(
                f"unlabeled_source={type(source).__name__}(...) was given together with "
                f"{', '.join(given)}; a source takes its own settings (its init_args): "
                "drop them, or drop unlabeled_source."
            )
        return source
    if layout is None:
        if given:
            raise ValueError(
                f"{', '.join(given)} given without unlabeled_layout; expected "
                "unlabeled_layout (acdc, nifti, images or phantom) to name the second "
                "source."
            )
        return None
    return unlabeled_source_for(layout, root, settings, phantom, main_phantom)


def bind_unlabeled_source(source: DataSource, main: DataSource, num_classes: int) -> None:
    """Binds the second source (no labeled cases) and checks it agrees with the main one.

    Raises:
        DataValidationError: Naming both sources, when the second has another class count
            or another number of image channels.
    """
    try:
        source.bind(num_classes, ())
    except DataValidationError as err:
        if "class" not in str(err):
            raise
        raise DataValidationError(
            f"unlabeled source {source.root}: {err} The main source {main.root} has "
            f"{num_classes} classes {list(main.class_names)}; expected the same classes in "
            "both sources."
        ) from err
    if int(source.in_channels) != int(main.in_channels):
        raise DataValidationError(
            f"unlabeled source {source.root} has {source.in_channels} image channel(s), but the "
            f"main source {main.root} has {main.in_channels}; expected the same channels in "
            "both sources."
        )


def refuse_labeled_cases_of(
    source: DataSource, split: CaseSplit, labeled_cases: int | Sequence[str]
) -> None:
    """Refuses labeled case ids that only the second (unlabeled) source has.

    Called when the main source did not find some of ``labeled_cases``.

    Raises:
        DataValidationError: Naming the second source and the cases, when any of
            ``labeled_cases`` is one of its training cases.
    """
    if isinstance(labeled_cases, int):
        return
    theirs = set(split.labeled) | set(split.unlabeled)
    asked = [c for c in labeled_cases if c in theirs]
    if asked:
        raise DataValidationError(
            f"labeled case(s) {asked[:10]} are in the unlabeled source {source.root}, which is "
            "declared unlabeled: its labels are never used for training; expected labeled cases "
            "of the main source (or make it the main source: data.layout / data.source)."
        )


def merge_pools(
    main: TrainingPools, second: TrainingPools, pool: str, source: DataSource
) -> TrainingPools:
    """The training pools: the main source's labeled pool, and the unlabeled pool of
    ``pool`` (``"second"``: the second source's images; ``"both"``: the main source's
    unlabeled images, then the second's).

    Raises:
        DataValidationError: Naming the second source, when it gave no image.
    """
    check_choice("unlabeled_pool", pool, UNLABELED_POOLS)
    images = second.labeled_volumes + second.unlabeled_volumes
    if not images:
        raise DataValidationError(
            f"unlabeled source {source.root}: found 0 training images; expected at least one "
            "unlabeled image (or no unlabeled source)."
        )
    volumes, slices = [], []
    parts = [main, second] if pool == "both" else [second]
    for part in parts:
        offset = len(volumes)
        volumes += [dataclasses.replace(v, label=None) for v in part.unlabeled_volumes]
        slices += [(offset + v, d) for v, d in part.unlabeled_slices]
    return TrainingPools(
        labeled_volumes=main.labeled_volumes,
        labeled_slices=main.labeled_slices,
        unlabeled_volumes=volumes,
        unlabeled_slices=slices,
    )
