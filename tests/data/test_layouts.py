"""``data/layouts.py``: the short form (``layout=`` with ``root``, ``settings``, ``phantom``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from advmim_lightning.data import (
    ACDCSource,
    NiftiSource,
    PhantomSettings,
    PhantomSource,
    SourceSettings,
)
from advmim_lightning.data.cases import DEFAULT_ACDC_CASE_PATTERN
from advmim_lightning.data.layouts import (
    LAYOUT_SOURCES,
    LAYOUTS,
    SOURCE_ARGUMENTS,
    refuse_source_arguments,
    source_for_layout,
)


def test_the_table_names_every_layout_and_its_source() -> None:
    assert LAYOUTS == ("acdc", "nifti", "phantom")
    assert LAYOUT_SOURCES == {"acdc": ACDCSource, "nifti": NiftiSource, "phantom": PhantomSource}
    assert all(LAYOUT_SOURCES[name].layout == name for name in LAYOUTS)
    assert SOURCE_ARGUMENTS == ("layout", "root", "settings", "phantom")


def test_the_phantom_takes_its_settings_and_the_shared_ones_and_ignores_root() -> None:
    settings = SourceSettings(val_fraction=0.25, split_seed=3, normalization="zscore")
    source = source_for_layout("phantom", "ignored", settings, PhantomSettings(cases=5, size=32))
    assert type(source) is PhantomSource
    assert source.settings is settings and source.normalization == "zscore"
    assert (source.phantom.cases, source.phantom.slices, source.phantom.size) == (5, 8, 32)
    assert source.root == "phantom(cases=5, slices=8, size=32, seed=0)"
    default = source_for_layout("phantom", None)
    assert default.settings == SourceSettings() and default.phantom == PhantomSettings()


def test_acdc_gets_its_case_pattern_and_keeps_the_other_settings(tmp_path: Path) -> None:
    settings = SourceSettings(normalization="zscore", window_width=100.0)
    source = source_for_layout("acdc", str(tmp_path), settings, PhantomSettings(cases=2))
    assert type(source) is ACDCSource and source.root == str(tmp_path)
    assert source.case_pattern == DEFAULT_ACDC_CASE_PATTERN == r"^(patient\d+)"
    assert source.settings.normalization == "zscore" and source.settings.window_width == 100.0
    assert source.grouper("patient007_frame01_slice_2") == "patient007"
    own = source_for_layout("acdc", str(tmp_path), SourceSettings(case_pattern=r"^(p\d)"))
    assert own.case_pattern == r"^(p\d)" and own.grouper("p3_x") == "p3"


def test_nifti_takes_root_and_the_settings_object(tmp_path: Path) -> None:
    settings = SourceSettings(slice_axis=1, cache_dir=str(tmp_path / "cache"))
    source = source_for_layout("nifti", str(tmp_path), settings)
    assert type(source) is NiftiSource and source.settings is settings
    assert source.root == str(tmp_path) and source.case_pattern is None


@pytest.mark.parametrize(
    "layout,root,settings,message",
    [
        ("dicom", "x", None, r"layout must be one of \('acdc', 'nifti', 'phantom'\), got 'dicom'"),
        ("acdc", None, None, "root is required for layout='acdc', got None"),
        ("nifti", "", None, "root is required for layout='nifti', got ''"),
        (
            "acdc",
            "x",
            SourceSettings(split_file="split.json"),
            r"split_file is not used by the acdc layout \(its lists define the split\); got "
            r"split_file='split.json'",
        ),
    ],
)
def test_refusals(layout: str, root, settings, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        source_for_layout(layout, root, settings)


def test_layout_arguments_next_to_a_source_are_named() -> None:
    source = PhantomSource()
    refuse_source_arguments(source, {})
    refuse_source_arguments(source, {"seed": 3, "num_workers": 0})  # not source arguments
    with pytest.raises(ValueError) as info:
        refuse_source_arguments(
            source, {"root": "data", "settings": SourceSettings(val_fraction=0.3), "seed": 1}
        )
    message = str(info.value)
    assert message.startswith(
        "source=PhantomSource(...) was given together with the layout argument(s) root='data', "
        "settings=SourceSettings(case_pattern=None"
    )
    assert "val_fraction=0.3" in message and "seed=1" not in message
    assert message.endswith("drop them, or drop source to use the layout's short form.")
