"""Checks of constructor arguments, shared by the data module and the data sources.

Each check raises :class:`ValueError` with a message that names the argument, says what was
given and what is allowed (e.g. ``labeled_batch_size must be an integer >= 1, got 0``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "check_choice",
    "check_fraction",
    "check_int",
    "check_labeled_cases",
    "check_root",
]


def check_int(name: str, value: Any, minimum: int, *, note: str = "") -> None:
    """Refuses anything but an integer ``>= minimum`` (booleans included).

    Args:
        name: The argument's name, for the message.
        value: The value given.
        minimum: The smallest value allowed.
        note: Optional text put in parentheses after the rule (e.g. another name).

    Raises:
        ValueError: ``<name> must be an integer >= <minimum>, got <value>``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        extra = f" ({note})" if note else ""
        raise ValueError(f"{name} must be an integer >= {minimum}{extra}, got {value!r}")


def check_fraction(name: str, value: float) -> None:
    """Refuses a fraction outside ``[0, 1)``.

    Raises:
        ValueError: ``<name> must be in [0, 1), got <value>``.
    """
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")


def check_choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    """Refuses a value not in ``allowed``.

    Raises:
        ValueError: ``<name> must be one of <allowed>, got <value>``.
    """
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")


def check_root(root: str | None, layout: str) -> str:
    """Returns the dataset root of a layout that reads files, ``~`` expanded.

    Raises:
        ValueError: If ``root`` is empty or None.
    """
    if not root:
        raise ValueError(f"root is required for layout={layout!r}, got {root!r}")
    return str(Path(root).expanduser())


def check_labeled_cases(labeled_cases: int | Sequence[str]) -> int | list[str]:
    """Returns a number of labeled cases (``>= 1``) or a list of distinct case ids.

    Raises:
        ValueError: On a count below 1, an empty list, a non-string id, or an id listed twice.
    """
    if isinstance(labeled_cases, bool) or (isinstance(labeled_cases, int) and labeled_cases < 1):
        raise ValueError(f"labeled_cases must be >= 1 or a list of case ids, got {labeled_cases!r}")
    if isinstance(labeled_cases, int):
        return labeled_cases
    cases = list(labeled_cases)
    if not cases or not all(isinstance(c, str) and c for c in cases):
        raise ValueError(
            f"labeled_cases must be a non-empty list of case id strings, got {cases!r}"
        )
    if len(set(cases)) != len(cases):
        raise ValueError(f"labeled_cases lists a case twice: {cases!r}")
    return cases
