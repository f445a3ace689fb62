"""``data/source.py``: the contract every data source meets, its helpers and checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from advmim_lightning.data import DataValidationError, SourceSettings, Volume
from advmim_lightning.data.cases import CaseSplit
from advmim_lightning.data.source import (
    DataSource,
    TrainingPools,
    check_training_pools,
    pools_from_volumes,
)


class Tiny(DataSource):
    """A source of fixed volumes: the smallest complete subclass."""

    def __init__(self, names: int = 2, channels=1, **changes) -> None:
        super().__init__(**changes)
        self.names, self.channels = names, channels
        self.opened = 0

    def open(self) -> None:
        self.opened += 1
        self.class_names = [f"c{i}" for i in range(self.names)]
        self.in_channels = self.channels

    def case_split(self) -> CaseSplit:
        return CaseSplit(labeled=["a"], unlabeled=["b"], source="tiny")

    def load_training(self, split: CaseSplit) -> TrainingPools:
        return TrainingPools()

    def load_eval(self, which, split) -> list[Volume]:
        return []


def volume(case: str, group: str, depth: int, label: bool = True) -> Volume:
    return Volume(
        case_id=case,
        group_id=group,
        image=np.zeros((1, depth, 4, 4), np.float32),
        label=np.zeros((depth, 4, 4), np.uint8) if label else None,
        spacing=(1.0, 1.0, 1.0),
        spacing_known=False,
        affine=np.eye(4),
        slice_axis=0,
        source=f"{case}.npz",
    )


def test_settings_come_from_an_object_or_keywords() -> None:
    assert Tiny().settings == SourceSettings()
    given = SourceSettings(normalization="none", case_pattern=r"^(\w)")
    source = Tiny(settings=given)
    assert source.settings is given and source.normalization == "none"
    assert source.case_pattern == r"^(\w)" and source.grouper("abc") == "a"
    changed = Tiny(settings=given, window_level=10.0)
    assert changed.settings == SourceSettings(
        normalization="none", case_pattern=r"^(\w)", window_level=10.0
    )


def test_settings_errors_name_the_field_and_value() -> None:
    with pytest.raises(TypeError, match=r"Tiny: unknown setting\(s\) \['num_cases'\]"):
        Tiny(num_cases=3)
    with pytest.raises(TypeError, match=r"settings must be a SourceSettings .*got dict"):
        Tiny(settings={"normalization": "none"})
    with pytest.raises(ValueError, match="window_width must be > 0, got -1"):
        Tiny(window_width=-1)
    with pytest.raises(ValueError, match="case_pattern '\\(' is not a valid regular expression"):
        Tiny(case_pattern="(")


def test_bind_hands_over_the_shared_settings_and_opens_once() -> None:
    source = Tiny(names=3)
    source.bind(3, ["p1", "p2"])
    assert (source.num_classes, source.labeled_cases, source.opened) == (3, ("p1", "p2"), 1)
    source.bind(3, 2)
    assert source.labeled_cases == 2


def test_bind_refuses_class_names_and_channels_that_do_not_fit() -> None:
    with pytest.raises(
        DataValidationError,
        match=r"data source: Tiny has 2 class name\(s\) \['c0', 'c1'\], but num_classes=4; "
        "expected one name per class, background first.",
    ):
        Tiny(names=2).bind(4, 1)
    for channels in (0, True, "1"):
        with pytest.raises(ValueError, match=r"Tiny.in_channels must be an integer >= 1, got"):
            Tiny(channels=channels).bind(2, 1)


def test_normalize_follows_the_settings() -> None:
    image = np.array([[[[0.0, 50.0], [100.0, 200.0]]]], np.float32)
    np.testing.assert_allclose(Tiny().normalize(image).ravel(), [0, 0.25, 0.5, 1.0])
    np.testing.assert_array_equal(Tiny(normalization="none").normalize(image), image)
    window = Tiny(normalization="ct_window", window_level=100.0, window_width=100.0)
    np.testing.assert_allclose(window.normalize(image).ravel(), [0, 0, 0.5, 1.0])


def test_label_dtype_and_the_default_hooks(tmp_path: Path) -> None:
    source = Tiny(names=256)
    source.bind(256, 1)
    assert source.label_dtype is np.uint8
    wide = Tiny(names=257)
    wide.bind(257, 1)
    assert wide.label_dtype is np.int32
    assert source.prepare() is None
    assert source.missing_cases_hint("val") == "val cases from Tiny.case_split()"
    assert source._open_root(str(tmp_path), "Tiny", "a folder") == tmp_path
    with pytest.raises(
        DataValidationError,
        match=r"Tiny root .*missing is not a folder; expected a folder of npz files\.",
    ):
        source._open_root(str(tmp_path / "missing"), "Tiny", "a folder of npz files")


def test_pools_from_volumes_splits_by_case_and_drops_unlabeled_labels() -> None:
    volumes = [
        volume("a_1", "a", 2),
        volume("b_1", "b", 3),
        volume("a_2", "a", 1),
        volume("c_1", "c", 2),  # an evaluation case: in neither pool
        volume("d_1", "d", 1, label=False),  # a labeled case's volume without a label
    ]
    split = CaseSplit(labeled=["a", "d"], unlabeled=["b"], val=["c"])
    pools = pools_from_volumes(volumes, split)
    assert [v.case_id for v in pools.labeled_volumes] == ["a_1", "a_2"]
    assert pools.labeled_slices == [(0, 0), (0, 1), (1, 0)]
    assert [v.case_id for v in pools.unlabeled_volumes] == ["b_1", "d_1"]
    assert pools.unlabeled_slices == [(0, 0), (0, 1), (0, 2), (1, 0)]
    assert all(v.label is None for v in pools.unlabeled_volumes)
    assert volumes[1].label is not None  # the input is not changed


def test_check_training_pools() -> None:
    split = CaseSplit(labeled=["a"], unlabeled=["b"], source="root/x")
    pools = pools_from_volumes([volume("a_1", "a", 4), volume("b_1", "b", 4)], split)
    check = {"labeled_cases": 1, "require_unlabeled": True, "batch_sizes": (2, 2)}
    check_training_pools(pools, split, **check)
    with pytest.warns(UserWarning, match="root/x: the unlabeled pool has 4 slice"):
        check_training_pools(pools, split, **{**check, "batch_sizes": (2, 8)})
    with pytest.raises(
        DataValidationError,
        match=r"root/x: the labeled pool is empty \(labeled cases \['a'\]\); expected at least "
        "one labeled slice",
    ):
        check_training_pools(TrainingPools(), split, **check)
    only_labeled = pools_from_volumes([volume("a_1", "a", 4)], split)
    with pytest.raises(
        DataValidationError, match=r"the unlabeled pool is empty: all 1 training case\(s\)"
    ):
        check_training_pools(only_labeled, split, **check)
    check_training_pools(only_labeled, split, **{**check, "require_unlabeled": False})
