"""Cases: grouping of volumes and slices by patient, case-level splits and split files.

A *case* is a patient. Slices and volumes are grouped into cases by a regular expression whose
first capture group is the case id (for ACDC ``^(patient\\d+)``, so that
``patient001_frame01_slice_0`` and ``patient001_frame12`` both belong to ``patient001``).
Every split and every leakage check works on cases, never on slices.

Split file format (JSON; every key optional)::

    {"train": [...], "val": [...], "test": [...], "labeled": [...]}

``train`` lists the training cases (labeled pool and unlabeled pool together), ``labeled`` the
labeled subset of ``train``, ``val`` and ``test`` the evaluation cases.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from lightning.pytorch.utilities import rank_zero_warn

from advmim_lightning.data.validation import (
    DataValidationError,
    check_disjoint,
    check_no_duplicates,
)
from advmim_lightning.method.randomness import sample_seed

__all__ = [
    "DEFAULT_ACDC_CASE_PATTERN",
    "CaseGrouper",
    "CaseSplit",
    "SplitFile",
    "check_case_split",
    "first_cases",
    "fraction_count",
    "read_split_file",
    "resolve_case_split",
    "seeded_order",
    "write_split_file",
]

DEFAULT_ACDC_CASE_PATTERN = r"^(patient\d+)"
_SPLIT_KEYS = ("train", "val", "test", "labeled")


class CaseGrouper:
    """Maps volume or slice names to case ids with a regular expression.

    Args:
        pattern: Regular expression matched at the start of a name (``re.match``); the case id
            is its first capture group, or the whole match when it has no group. None maps every
            name to itself.

    Raises:
        ValueError: If the pattern does not compile.
    """

    def __init__(self, pattern: str | None) -> None:
        self.pattern = pattern
        try:
            self._regex = re.compile(pattern) if pattern is not None else None
        except re.error as err:
            raise ValueError(
                f"case_pattern {pattern!r} is not a valid regular expression: {err}"
            ) from err

    def __call__(self, name: str, source: str = "") -> str:
        """Returns the case id of ``name``.

        Raises:
            DataValidationError: If the pattern does not match ``name``.
        """
        if self._regex is None:
            return name
        match = self._regex.match(name)
        if match is None or not (match.group(1) if self._regex.groups else match.group(0)):
            where = f"{source}: " if source else ""
            raise DataValidationError(
                f"{where}name {name!r} does not match the case id pattern {self.pattern!r}; "
                "expected every name to start with a case id (set case_pattern)."
            )
        return match.group(1) if self._regex.groups else match.group(0)


def first_cases(names: Iterable[str], grouper: CaseGrouper, count: int, source: str) -> list[str]:
    """The first ``count`` distinct case ids in the order the names are listed.

    Args:
        names: Slice or volume names in list order.
        grouper: Maps a name to its case id.
        count: How many cases.
        source: The list file, for messages.

    Returns:
        ``count`` case ids in first-appearance order.

    Raises:
        DataValidationError: If fewer than ``count`` cases exist.
    """
    seen: dict[str, None] = {}
    for name in names:
        seen.setdefault(grouper(name, source), None)
        if len(seen) == count:
            break
    if len(seen) < count:
        raise DataValidationError(
            f"{source}: labeled_cases={count} but only {len(seen)} training case(s) are listed; "
            f"expected at least {count}."
        )
    return list(seen)


def seeded_order(case_ids: Sequence[str], seed: int) -> list[str]:
    """A seeded permutation of ``sorted(case_ids)`` (independent of the input order)."""
    ordered = sorted(case_ids)
    perm = np.random.default_rng(sample_seed(0x53504C54, seed)).permutation(len(ordered))
    return [ordered[i] for i in perm]


@dataclass
class SplitFile:
    """Contents of a split file; None marks a missing key."""

    train: list[str] | None = None
    val: list[str] | None = None
    test: list[str] | None = None
    labeled: list[str] | None = None


def read_split_file(path: str | Path) -> SplitFile:
    """Reads and checks a split file.

    Args:
        path: JSON file with optional keys ``train``, ``val``, ``test``, ``labeled``, each a list
            of case id strings.

    Returns:
        The parsed split.

    Raises:
        DataValidationError: If the file is missing or not valid JSON, has an unknown key or a
            value that is not a list of strings, lists a case twice in one key, puts a case in
            more than one of ``train``/``val``/``test``, or lists a labeled case that is not in
            ``train`` (when ``train`` is given).
    """
    p = Path(path)
    if not p.is_file():
        raise DataValidationError(f"Missing split file {p}: found nothing, expected a JSON file.")
    try:
        content = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataValidationError(f"Unreadable split file {p}: {err}; expected JSON.") from err
    if not isinstance(content, dict):
        raise DataValidationError(
            f"{p}: found a JSON {type(content).__name__}, expected an object with keys "
            f"{list(_SPLIT_KEYS)}."
        )
    unknown = sorted(set(content) - set(_SPLIT_KEYS))
    if unknown:
        raise DataValidationError(
            f"{p}: unknown key(s) {unknown}; expected only {list(_SPLIT_KEYS)}."
        )
    split = SplitFile()
    for key in _SPLIT_KEYS:
        if key not in content:
            continue
        value = content[key]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise DataValidationError(
                f"{p}: key {key!r} holds {value!r}; expected a list of case id strings."
            )
        check_no_duplicates(value, f"{p} [{key}]")
        setattr(split, key, list(value))
    seen: dict[str, str] = {}
    for key in ("train", "val", "test"):
        for case in getattr(split, key) or []:
            if case in seen:
                raise DataValidationError(
                    f"{p}: case {case!r} is in both {seen[case]!r} and {key!r}; expected each case "
                    "in one split (duplicate case id)."
                )
            seen[case] = key
    if split.labeled is not None and split.train is not None:
        outside = [c for c in split.labeled if c not in set(split.train)]
        if outside:
            where = {c: seen.get(c, "no split") for c in outside[:10]}
            raise DataValidationError(
                f"{p}: labeled case(s) {where} are not in 'train'; expected labeled cases to be "
                "training cases."
            )
    return split


def write_split_file(path: str | Path, split: SplitFile | dict[str, list[str]]) -> Path:
    """Writes a split file (keys with None values are left out).

    Args:
        path: Output JSON path (parent folders are created).
        split: A :class:`SplitFile` or a dict with the same keys.

    Returns:
        The path written.
    """
    p = Path(path)
    data = split.__dict__ if isinstance(split, SplitFile) else dict(split)
    content = {k: list(v) for k, v in data.items() if v is not None}
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(content, indent=2) + "\n")
    return p


@dataclass
class CaseSplit:
    """The case-level split a data module resolved.

    Attributes:
        labeled: Case ids whose slices form the labeled pool.
        unlabeled: Case ids whose slices form the unlabeled pool (labels dropped).
        val: Validation case ids.
        test: Test case ids.
        source: Where the split came from (list files, split file, seeded), for messages.
    """

    labeled: list[str] = field(default_factory=list)
    unlabeled: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    source: str = ""

    def as_split_file(self) -> SplitFile:
        """The split in split-file form (``train`` = labeled + unlabeled)."""
        return SplitFile(
            train=self.labeled + self.unlabeled,
            val=list(self.val),
            test=list(self.test),
            labeled=list(self.labeled),
        )


def fraction_count(fraction: float, total: int) -> int:
    """How many of ``total`` groups a fraction selects: at least 1 when the fraction is positive,
    and never all of them (one group is always left for training)."""
    if fraction <= 0 or total <= 1:
        return 0
    return min(max(1, round(fraction * total)), total - 1)


def resolve_case_split(
    groups: Sequence[str],
    labeled_capable: set[str],
    *,
    labeled_cases: int | Sequence[str],
    split: SplitFile | None,
    split_seed: int,
    val_fraction: float,
    test_fraction: float,
    fixed_test: Sequence[str] | None,
    source: str,
) -> CaseSplit:
    """Resolves the case-level split of a folder-style dataset (NIfTI, phantom).

    Precedence, key by key: the split file; then ``fixed_test`` for the test set (NIfTI's
    ``imagesTs``) or a seeded ``test_fraction`` of the groups; a seeded ``val_fraction`` of the
    labeled training groups for validation; ``labeled_cases`` (a list of ids, or the first
    ``n`` labeled training groups in seeded order) for the labeled pool. All seeded choices use
    ``split_seed`` and do not depend on listing order. The remaining training groups form the
    unlabeled pool.

    Args:
        groups: Every case id available for training/validation (from the training folder).
        labeled_capable: Those of ``groups`` that have a label.
        labeled_cases: Number of labeled cases, or their ids.
        split: Parsed split file, or None.
        split_seed: Seed of the seeded choices.
        val_fraction: Fraction of labeled training groups used for validation.
        test_fraction: Fraction of groups used for testing when neither the split file nor
            ``fixed_test`` gives a test set.
        fixed_test: Test case ids that exist outside ``groups`` (e.g. ``imagesTs``), or None.
        source: Dataset root or split file, for messages.

    Returns:
        The split.

    Raises:
        DataValidationError: On ids that do not exist, unlabeled cases asked to be labeled or
            validated, too few labeled cases, or a labeled case that is also in val/test.
    """
    where = f"{source}" if split is None else f"{source} (split file)"
    known = set(groups)
    fixed = list(fixed_test) if fixed_test is not None else None

    def require_known(ids: Sequence[str], key: str, allowed: set[str]) -> None:
        missing = [c for c in ids if c not in allowed]
        if missing:
            raise DataValidationError(
                f"{where}: {key} case(s) {missing[:10]} not found; expected ids among the "
                f"{len(allowed)} available case(s) (e.g. {sorted(allowed)[:3]})."
            )

    explicit: list[str] | None = None
    if split is not None and split.labeled is not None:
        explicit = list(split.labeled)
    elif not isinstance(labeled_cases, int):
        explicit = list(labeled_cases)

    if split is not None and split.test is not None:
        require_known(split.test, "test", known | set(fixed or []))
        test = list(split.test)
    elif fixed is not None:
        test = fixed
    else:  # seeded, never drawing an explicitly labeled case
        pool = [g for g in groups if explicit is None or g not in explicit]
        test = seeded_order(pool, split_seed)[: fraction_count(test_fraction, len(groups))]
    test_set = set(test)

    if split is not None and split.train is not None:
        require_known(split.train, "train", known)
        remaining = list(split.train)
    else:
        val_given = set(split.val) if split is not None and split.val is not None else set()
        remaining = [g for g in sorted(groups) if g not in test_set and g not in val_given]

    if split is not None and split.val is not None:
        require_known(split.val, "val", known)
        val = list(split.val)
    else:
        candidates = [
            g for g in remaining if g in labeled_capable and (explicit is None or g not in explicit)
        ]
        n_capable = sum(1 for g in remaining if g in labeled_capable)
        val = seeded_order(candidates, split_seed)[: fraction_count(val_fraction, n_capable)]
    unlabeled_val = [g for g in val if g not in labeled_capable]
    if unlabeled_val:
        raise DataValidationError(
            f"{where}: val case(s) {unlabeled_val[:10]} have no label file; expected validation "
            "cases with labels."
        )
    val_set = set(val)
    remaining = [g for g in remaining if g not in val_set]

    if explicit is not None:
        check_no_duplicates(explicit, f"{where} [labeled]")
        require_known(explicit, "labeled", known)
        labeled = explicit
    else:
        count = int(labeled_cases)  # type: ignore[arg-type]
        pool = seeded_order([g for g in remaining if g in labeled_capable], split_seed)
        if len(pool) < count:
            raise DataValidationError(
                f"{where}: labeled_cases={count} but only {len(pool)} labeled training case(s) "
                f"remain after the val/test split; expected at least {count}."
            )
        labeled = pool[:count]
    not_labeled = [g for g in labeled if g not in labeled_capable]
    if not_labeled:
        raise DataValidationError(
            f"{where}: labeled case(s) {not_labeled[:10]} have no label file; expected labeled "
            "cases with labels."
        )
    check_disjoint(labeled, val, "val", where)
    check_disjoint(labeled, test, "test", where)
    outside = [g for g in labeled if g not in set(remaining)]
    if outside:
        raise DataValidationError(
            f"{where}: labeled case(s) {outside[:10]} are not training cases; expected ids from "
            "the training split."
        )
    labeled_set = set(labeled)
    unlabeled = [g for g in remaining if g not in labeled_set and g not in test_set]
    return CaseSplit(labeled=labeled, unlabeled=unlabeled, val=val, test=test, source=where)


def check_case_split(split: CaseSplit) -> None:
    """Checks a source's case split: no labeled case is evaluated on.

    Warns (does not refuse) when unlabeled training cases are also val or test cases: their
    images, not labels, are used for training.

    Raises:
        DataValidationError: If a labeled case is also in the val or test split.
    """
    check_disjoint(split.labeled, split.val, "val", split.source)
    check_disjoint(split.labeled, split.test, "test", split.source)
    for name, other in (("val", split.val), ("test", split.test)):
        overlap = sorted(set(split.unlabeled) & set(other))
        if overlap:
            rank_zero_warn(
                f"{split.source}: unlabeled training case(s) {overlap[:10]} are also in "
                f"the {name} split; their images (not labels) are used for training."
            )
