"""Case grouping, seeded case-level splits and split files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from advmim_lightning.data.cases import (
    DEFAULT_ACDC_CASE_PATTERN,
    CaseGrouper,
    SplitFile,
    first_cases,
    read_split_file,
    resolve_case_split,
    seeded_order,
    write_split_file,
)
from advmim_lightning.data.validation import DataValidationError

SSL4MIS_NAMES = [
    f"patient{p:03d}_frame{f:02d}_slice_{s}"
    for p in (1, 2, 3, 4, 5, 6, 7, 8)
    for f in (1, 12 if p % 2 else 14)
    for s in range(p + 5)  # patients have different slice counts, like ACDC
]


def test_acdc_grouping_keeps_both_frames_together() -> None:
    grouper = CaseGrouper(DEFAULT_ACDC_CASE_PATTERN)
    assert grouper("patient001_frame01_slice_0") == "patient001"
    assert grouper("patient001_frame12") == "patient001"
    assert CaseGrouper(None)("anything_at_all") == "anything_at_all"
    assert CaseGrouper(r"^sub-\d+")("sub-07_ses-1") == "sub-07"  # no group: whole match
    with pytest.raises(DataValidationError, match=r"'case_7' does not match the case id pattern"):
        grouper("case_7", "x.list")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        CaseGrouper("(unclosed")


@pytest.mark.parametrize(
    "count,expected_slices", [(3, 2 * (6 + 7 + 8)), (7, 2 * sum(range(6, 13)))]
)
def test_first_patients_in_list_order(count: int, expected_slices: int) -> None:
    grouper = CaseGrouper(DEFAULT_ACDC_CASE_PATTERN)
    labeled = first_cases(SSL4MIS_NAMES, grouper, count, "train_slices.list")
    assert labeled == [f"patient{p:03d}" for p in range(1, count + 1)]
    slices = [n for n in SSL4MIS_NAMES if grouper(n) in labeled]
    assert len(slices) == expected_slices
    assert slices == SSL4MIS_NAMES[:expected_slices]  # a prefix of the list, as SSL4MIS


def test_too_many_labeled_cases() -> None:
    with pytest.raises(DataValidationError, match=r"labeled_cases=9 but only 8 training case"):
        first_cases(SSL4MIS_NAMES, CaseGrouper(DEFAULT_ACDC_CASE_PATTERN), 9, "train_slices.list")


def test_seeded_order_ignores_input_order() -> None:
    ids = [f"c{i}" for i in range(10)]
    assert seeded_order(ids, 3) == seeded_order(list(reversed(ids)), 3)
    assert seeded_order(ids, 3) != seeded_order(ids, 4)
    assert sorted(seeded_order(ids, 3)) == ids


def split(**kwargs):
    defaults = {
        "labeled_cases": 2,
        "split": None,
        "split_seed": 0,
        "val_fraction": 0.2,
        "test_fraction": 0.2,
        "fixed_test": None,
        "source": "root",
    }
    groups = [f"c{i}" for i in range(10)]
    return resolve_case_split(groups, set(groups[:8]), **{**defaults, **kwargs})


def test_seeded_split_is_case_level_and_disjoint() -> None:
    s = split()
    # test: 20 % of 10 cases; val: 20 % of the 7 labeled cases left (round(1.4) = 1)
    assert len(s.test) == 2 and len(s.val) == 1 and len(s.labeled) == 2
    assert set(s.val) <= {f"c{i}" for i in range(8)}  # validation needs labels
    everything = s.labeled + s.unlabeled + s.val + s.test
    assert sorted(everything) == sorted(f"c{i}" for i in range(10))
    assert split() == s and split(split_seed=1) != s


def test_split_file_wins(tmp_path: Path) -> None:
    f = write_split_file(
        tmp_path / "split.json",
        SplitFile(train=["c0", "c1", "c2"], val=["c3"], test=["c4"], labeled=["c1"]),
    )
    s = split(split=read_split_file(f))
    assert (s.labeled, s.unlabeled, s.val, s.test) == (["c1"], ["c0", "c2"], ["c3"], ["c4"])


def test_explicit_labeled_list_and_leakage() -> None:
    s = split(labeled_cases=["c0", "c1"], val_fraction=0.3)
    assert s.labeled == ["c0", "c1"] and not set(s.val) & {"c0", "c1"}
    with pytest.raises(DataValidationError, match=r"in both the labeled training pool and the val"):
        split(split=SplitFile(val=["c0"], labeled=["c0"]))
    with pytest.raises(
        DataValidationError, match=r"in both the labeled training pool and the test"
    ):
        split(labeled_cases=["c7"], fixed_test=["c7"])
    with pytest.raises(DataValidationError, match=r"labeled case\(s\) \['c8'\] have no label file"):
        split(labeled_cases=["c8"])
    with pytest.raises(DataValidationError, match=r"labeled case\(s\) \['zz'\] not found"):
        split(labeled_cases=["zz"])
    with pytest.raises(DataValidationError, match=r"labeled_cases=9 but only"):
        split(labeled_cases=9)


@pytest.mark.parametrize(
    "content,message",
    [
        ("{not json", "Unreadable split file"),
        ("[1, 2]", "found a JSON list"),
        ('{"training": []}', r"unknown key\(s\) \['training'\]"),
        ('{"val": "c1"}', "key 'val' holds 'c1'; expected a list"),
        ('{"val": ["c1", "c1"]}', r"duplicate case id\(s\) 'c1' \(2x\)"),
        ('{"val": ["c1"], "test": ["c1"]}', "case 'c1' is in both 'val' and 'test'"),
        ('{"train": ["c1"], "labeled": ["c2"]}', "are not in 'train'"),
    ],
)
def test_split_file_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "split.json"
    path.write_text(content)
    with pytest.raises(DataValidationError, match=message) as info:
        read_split_file(path)
    assert str(path) in str(info.value)


def test_missing_split_file(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match=r"Missing split file .*nope.json"):
        read_split_file(tmp_path / "nope.json")
    assert json.loads(write_split_file(tmp_path / "s.json", {"val": ["a"]}).read_text()) == {
        "val": ["a"]
    }
