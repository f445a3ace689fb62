"""The short form of the data module: ``layout=`` (with ``root``, ``settings`` and ``phantom``)
to a :class:`DataSource`.

``AdvMIMDataModule(layout="phantom", phantom=PhantomSettings(cases=8))`` builds
``PhantomSource(PhantomSettings(cases=8), settings)`` through :data:`LAYOUT_SOURCES`: per
layout, the source class. Every source takes the data module's one
:class:`~advmim_lightning.data.settings.SourceSettings` (``settings``) and uses the fields
that apply to it; the file layouts take ``root``, the phantom its
:class:`~advmim_lightning.data.settings.PhantomSettings`. What a layout does not take is
ignored (so a config may set ``phantom`` next to ``layout: acdc``), except what it refuses
(the ACDC lists define the split: no ``settings.split_file``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from advmim_lightning.data.acdc import ACDCSource
from advmim_lightning.data.arguments import check_choice
from advmim_lightning.data.nifti import NiftiSource
from advmim_lightning.data.phantom_source import PhantomSource
from advmim_lightning.data.settings import PhantomSettings, SourceSettings
from advmim_lightning.data.source import DataSource

__all__ = [
    "LAYOUTS",
    "LAYOUT_SOURCES",
    "SOURCE_ARGUMENTS",
    "refuse_source_arguments",
    "source_for_layout",
]

#: The short form's table: layout name -> its source class.
LAYOUT_SOURCES: dict[str, type[DataSource]] = {
    "acdc": ACDCSource,
    "nifti": NiftiSource,
    "phantom": PhantomSource,
}

#: The layout names, in the order messages list them.
LAYOUTS = tuple(LAYOUT_SOURCES)

#: The data-module arguments that configure a layout's source (refused next to ``source``).
SOURCE_ARGUMENTS = ("layout", "root", "settings", "phantom")


def source_for_layout(
    layout: str,
    root: str | None,
    settings: SourceSettings | None = None,
    phantom: PhantomSettings | None = None,
) -> DataSource:
    """Builds the source of a layout.

    Args:
        layout: ``"acdc"``, ``"nifti"`` or ``"phantom"``.
        root: The dataset root (acdc, nifti; ignored by the phantom).
        settings: The shared source settings; None: the defaults.
        phantom: The phantom's settings (phantom; ignored by the others); None: the defaults.

    Returns:
        The unbound source (the data module calls :meth:`DataSource.bind`).

    Raises:
        ValueError: On an unknown layout, a missing ``root`` (acdc, nifti) or a setting the
            layout refuses (acdc: ``split_file``).
    """
    check_choice("layout", layout, LAYOUTS)
    if layout == "phantom":
        return PhantomSource(phantom, settings)
    return LAYOUT_SOURCES[layout](root, settings)  # type: ignore[call-arg]


def refuse_source_arguments(source: DataSource, given: Mapping[str, Any]) -> None:
    """Refuses layout arguments next to a source object (which would ignore them).

    Args:
        source: The source given to the data module.
        given: The data-module arguments that differ from their defaults, by name.

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
