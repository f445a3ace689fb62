"""The short form of the data module: ``layout=`` and flat arguments to a :class:`DataSource`.

``AdvMIMDataModule(layout="phantom", phantom_cases=8)`` builds
``PhantomSource(num_cases=8, ...)`` through :data:`LAYOUT_SOURCES`: per layout, the source
class and which flat data-module argument becomes which argument of that class. Flat arguments
a layout does not take are ignored (so a config may set ``phantom_cases`` next to
``layout: acdc``), except those it refuses (the ACDC lists define the split: no
``split_file``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from advmim_lightning.data.acdc import ACDCSource
from advmim_lightning.data.arguments import check_choice
from advmim_lightning.data.nifti import NiftiSource
from advmim_lightning.data.phantom_source import PhantomSource
from advmim_lightning.data.source import DataSource

__all__ = [
    "LAYOUTS",
    "LAYOUT_SOURCES",
    "SOURCE_ARGUMENTS",
    "Layout",
    "refuse_source_arguments",
    "source_for_layout",
]


@dataclass(frozen=True)
class Layout:
    """How a layout's flat arguments become its source.

    Attributes:
        source: The :class:`DataSource` subclass.
        arguments: Flat data-module argument name -> the source's ``__init__`` argument name.
        refused: Flat arguments the layout refuses when given (not None) -> why.
    """

    source: type[DataSource]
    arguments: Mapping[str, str]
    refused: Mapping[str, str] = field(default_factory=dict)


def _same(*names: str) -> dict[str, str]:
    return {name: name for name in names}


_NORMALIZATION = _same("case_pattern", "normalization", "window_level", "window_width")
_SPLIT = _same("split_file", "split_seed", "val_fraction")

#: The short form's table: layout name -> :class:`Layout`.
LAYOUT_SOURCES: dict[str, Layout] = {
    "acdc": Layout(
        ACDCSource,
        {**_same("root"), **_NORMALIZATION},
        refused={"split_file": "its lists define the split"},
    ),
    "nifti": Layout(
        NiftiSource,
        {**_same("root", "slice_axis", "cache_dir"), **_SPLIT, **_NORMALIZATION},
    ),
    "phantom": Layout(
        PhantomSource,
        {
            "phantom_cases": "num_cases",
            "phantom_slices": "num_slices",
            "phantom_size": "size",
            "phantom_seed": "seed",
            "phantom_heart_scale": "heart_scale",
            **_same("test_fraction", "cache_dir"),
            **_SPLIT,
            **_NORMALIZATION,
        },
    ),
}

#: The layout names, in the order messages list them.
LAYOUTS = tuple(LAYOUT_SOURCES)

#: Every flat argument that configures a source (``layout`` and ``root`` included).
SOURCE_ARGUMENTS = (
    "layout",
    *dict.fromkeys(name for layout in LAYOUT_SOURCES.values() for name in layout.arguments),
)


def source_for_layout(layout: str, flat: Mapping[str, Any]) -> DataSource:
    """Builds the source of a layout from the data module's flat arguments.

    Args:
        layout: ``"acdc"``, ``"nifti"`` or ``"phantom"``.
        flat: The data module's arguments by name (others than the layout's are ignored).

    Returns:
        The unbound source (the data module calls :meth:`DataSource.bind`).

    Raises:
        ValueError: On an unknown layout, an argument the layout refuses, or the source's own
            argument checks.
    """
    check_choice("layout", layout, LAYOUTS)
    entry = LAYOUT_SOURCES[layout]
    for name, why in entry.refused.items():
        if flat.get(name) is not None:
            raise ValueError(
                f"{name} is not used by the {layout} layout ({why}); got {name}={flat[name]!r}"
            )
    return entry.source(**{own: flat[name] for name, own in entry.arguments.items()})


def refuse_source_arguments(source: DataSource, given: Mapping[str, Any]) -> None:
    """Refuses flat source arguments next to a source object (which would ignore them).

    Args:
        source: The source given to the data module.
        given: The flat arguments that differ from their defaults, by name.

    Raises:
        ValueError: Naming the arguments, when any is among :data:`SOURCE_ARGUMENTS`.
    """
    clash = {name: value for name, value in given.items() if name in SOURCE_ARGUMENTS}
    if clash:
        shown = ", ".join(f"{name}={value!r}" for name, value in clash.items())
        raise ValueError(
            f"source={type(source).__name__}(...) was given together with the layout "
            f"argument(s) {shown}; a source takes its own settings (its init_args), so these "
            "would be ignored: drop them, or drop source to use the layout's short form."
        )
