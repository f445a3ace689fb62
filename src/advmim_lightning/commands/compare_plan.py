"""What each combination of ``advmim compare`` runs: its settings, notes and command words.

The lists are checked (:func:`check_lists`), the settings the config files and overrides state
are read (:func:`stated_settings`), per-method settings are put back to each method's default
or out of its way (:data:`PER_METHOD_SETTINGS`, :data:`SETTING_USERS`,
:func:`notes_on_settings`), and :func:`combination_job` writes the ``advmim fit`` /
``advmim test`` words of one :class:`Combination` (:mod:`advmim_lightning.commands.compare`
explains the rules). :func:`combination_settings` is what a combination is trained with, recorded
beside its run (``compare_settings.json``) and compared by :func:`settings_conflicts` when the
command runs again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from advmim_lightning.method.config import METHOD_DEFAULTS

#: Settings whose default depends on the method (``None`` resolves to the method's value).
PER_METHOD_SETTINGS = tuple(dict.fromkeys(k for d in METHOD_DEFAULTS.values() for k in d))
#: Which methods use each method-dependent setting (the others ignore or refuse it).
SETTING_USERS: dict[str, tuple[str, ...]] = {
    **{k: tuple(m for m, d in METHOD_DEFAULTS.items() if k in d) for k in PER_METHOD_SETTINGS},
    **dict.fromkeys(
        (
            "loss_variant",
            "discriminator_real",
            "mask_ratio",
            "mask_block_size",
            "discriminator_base_channels",
        ),
        ("advmim",),
    ),
    **dict.fromkeys(("rampup_length", "rampup_interval"), ("advmim", "ctct")),
}
#: What ``compare`` sets per combination: these cannot be given as overrides.
_CONTROLLED = {
    "model.method": "--methods",
    "data.labeled_cases": "--labeled_cases",
    "seed_everything": "--seeds",
    "data.seed": "--seeds",
    "model.rng_seed": "--seeds",
    "run_name": "--output (run folders are named <method>-l<cases>-s<seed>)",
    "runs_dir": "--output",
    "ckpt_path": "--checkpoint (and resumes from last.ckpt by itself)",
    "model.eval_network": "--networks (every listed network is tested)",
}
_SEED_KEYS = ("seed_everything", "data.seed", "model.rng_seed")
#: The methods ``compare`` runs by default, in the order its tables list them.
DEFAULT_METHODS = ("supervised", "ctct", "advmim")
_RUN_FOLDER = re.compile(r"(?P<method>[a-z_]+)-l(?P<cases>\d+)-s(?P<seed>\d+)")


@dataclass(frozen=True)
class Combination:
    """One run of ``compare``: a method at a labeled-case count and seed."""

    method: str
    labeled_cases: int
    seed: int

    @property
    def name(self) -> str:
        """Its run folder's name, ``<method>-l<cases>-s<seed>``."""
        return f"{self.method}-l{self.labeled_cases}-s{self.seed}"

    @classmethod
    def from_name(cls, name: str) -> Combination | None:
        """The combination whose run folder is called ``name``; None for any other folder."""
        found = _RUN_FOLDER.fullmatch(name)
        if found is None:
            return None
        return cls(found["method"], int(found["cases"]), int(found["seed"]))


def method_rank(method: str) -> int:
    """Where ``method`` goes in a table: :data:`DEFAULT_METHODS`' order, others after them."""
    return DEFAULT_METHODS.index(method) if method in DEFAULT_METHODS else len(DEFAULT_METHODS)


def check_lists(
    methods: Sequence[str], labeled_cases: Sequence[int], seeds: Sequence[int]
) -> tuple[list[str], list[int], list[int]]:
    methods, labeled_cases, seeds = list(methods), list(labeled_cases), list(seeds)
    unknown = [m for m in methods if m not in METHOD_DEFAULTS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; expected some of {sorted(METHOD_DEFAULTS)}")
    for name, values in (("methods", methods), ("labeled_cases", labeled_cases), ("seeds", seeds)):
        if not values:
            raise ValueError(f"{name} is empty; expected at least one value")
        if len(set(values)) != len(values):
            raise ValueError(f"{name} lists a value twice: {values}")
    for name, values in (("labeled_cases", labeled_cases), ("seeds", seeds)):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ValueError(f"{name} must be integers, got {values}")
    if min(labeled_cases) < 1:
        raise ValueError(f"labeled_cases must be >= 1, got {labeled_cases}")
    return methods, labeled_cases, seeds


def stated_settings(
    configs: Sequence[str], overrides: Sequence[str]
) -> tuple[dict[str, Any], set[str]]:
    """Dotted settings the config files and the overrides state, and which came from files.

    Returns:
        ``({"model.mask_block_size": 16, ...}, keys stated by the files and not overridden)``.
        Override values stay strings, as typed.

    Raises:
        FileNotFoundError: When a config file does not exist.
        ValueError: When a file is not a YAML mapping, or an override sets what
            ``compare`` sets itself.
    """
    import yaml

    stated: dict[str, Any] = {}
    for config in configs:
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"config file {path} is not valid YAML: {err}") from err
        if not isinstance(tree, dict):
            kind = type(tree).__name__
            raise ValueError(f"config file {path} holds a {kind}; expected a mapping")
        stated.update(_dotted(tree))
    from_files = set(stated)
    words = list(overrides)
    for index, word in enumerate(words):
        if not word.startswith("--"):
            continue
        key, equals, value = word[2:].partition("=")
        if key in _CONTROLLED:
            raise ValueError(
                f"--{key} is set by compare for every combination; use {_CONTROLLED[key]}"
            )
        if not equals:
            following = words[index + 1] if index + 1 < len(words) else None
            value = None if following is None or following.startswith("--") else following
        stated[key] = value
        from_files.discard(key)
    return stated, from_files


def _dotted(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and "class_path" not in value:
            flat.update(_dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_split_file(stated: dict[str, Any]) -> None:
    """Refuse a split file that lists the labeled cases: it would win over every count."""
    path = stated.get("data.settings.split_file")
    if not path:
        return
    try:
        split = json.loads(Path(str(path)).read_text())
    except (OSError, ValueError):
        return  # advmim fit reports an unreadable split file with its own message
    if isinstance(split, dict) and split.get("labeled") is not None:
        raise ValueError(
            f"data.settings.split_file {path} lists the labeled cases ('labeled' key), which "
            "wins over data.labeled_cases, so every labeled count would train on the same "
            "cases; expected a split file without 'labeled' (compare sets the count per run)"
        )


def notes_on_settings(
    stated: dict[str, Any], from_files: set[str], methods: Sequence[str]
) -> list[str]:
    """One line per stated setting that some compared method does not take as stated."""
    notes = []
    for key in PER_METHOD_SETTINGS:
        dotted = f"model.{key}"
        if dotted in from_files and any(key in METHOD_DEFAULTS[m] for m in methods):
            defaults = ", ".join(
                f"{m} {METHOD_DEFAULTS[m][key]}" for m in methods if key in METHOD_DEFAULTS[m]
            )
            notes.append(
                f"{dotted}={stated[dotted]} from the config is a per-method setting: each method "
                f"uses its own default instead ({defaults}); give --{dotted} to compare to set "
                "it for every method that uses it"
            )
    for key, users in SETTING_USERS.items():
        dotted = f"model.{key}"
        ignoring = [m for m in methods if m not in users]
        if dotted in stated and ignoring:
            notes.append(
                f"{dotted}={stated[dotted]} is used by {' and '.join(users)} only; "
                f"{' and '.join(ignoring)} ignore{'s' if len(ignoring) == 1 else ''} it"
            )
    varied = ("model.method", "data.labeled_cases", *_SEED_KEYS)
    replaced = [f"{key}={stated[key]}" for key in varied if key in stated]
    if replaced:
        notes.append(
            f"{', '.join(replaced)} from the config: replaced in each run by its method, "
            "labeled cases and seed"
        )
    return notes


def combination_job(
    combo: Combination,
    configs: Sequence[str],
    overrides: Sequence[str],
    stated: dict[str, Any],
    from_files: set[str],
    output: Path,
    checkpoint: str,
    networks: Sequence[str] = ("cnn", "transformer"),
) -> dict[str, Any]:
    """The ``advmim fit`` and ``advmim test`` words of one combination, and the networks
    its test scores (one ``advmim test`` each)."""
    words = [w for c in configs for w in ("-c", c)] + list(overrides)
    words += ["--model.method", combo.method, "--data.labeled_cases", str(combo.labeled_cases)]
    for key in _SEED_KEYS:
        words += [f"--{key}", str(combo.seed)]
    words += ["--runs_dir", str(output), "--run_name", combo.name]
    for key in PER_METHOD_SETTINGS:  # back to the method's default, or out of its way
        dotted = f"model.{key}"
        unused = key not in METHOD_DEFAULTS[combo.method]
        if dotted in stated and (unused or dotted in from_files):
            words += [f"--{dotted}", "null"]
    last = output / combo.name / "checkpoints" / "last.ckpt"
    resume = last.is_file()
    return {
        "run_dir": str(output / combo.name),
        "fit": ["fit", *words, *(["--ckpt_path", str(last)] if resume else [])],
        "test": ["test", *words, "--wandb_mode", "disabled"],
        "checkpoint": checkpoint,
        "networks": list(networks),
        "resume": resume,
    }


#: Settings that change how a run is shown or saved, not its results: never compared.
_NOT_RESULTS = ("wandb_mode", "wandb_project", "checkpoint_every", "data.num_workers")
_NOT_RESULTS_PREFIXES = ("panels.", "prediction_writer.")
_NOT_RESULTS_TRAINER = ("enable_progress_bar", "enable_model_summary", "log_every_n_steps")
#: The value a settings comparison shows for a setting one side does not state.
NOT_SET = "(not set)"


def _affects_results(key: str) -> bool:
    if key in _NOT_RESULTS or key in _CONTROLLED or key.startswith(_NOT_RESULTS_PREFIXES):
        return False
    return key.removeprefix("trainer.") not in _NOT_RESULTS_TRAINER


def _typed(value: Any) -> Any:
    """An override's text as the command line reads it (``"6"`` -> 6, ``"null"`` -> None)."""
    import yaml

    if not isinstance(value, str):
        return value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def combination_settings(
    combo: Combination,
    stated: dict[str, Any],
    from_files: set[str],
    checkpoint: str,
) -> dict[str, Any]:
    """The settings one combination is trained and tested with, as plain JSON data.

    Every setting the config files and overrides state (override text read as YAML, as the
    command line does), except what ``compare`` varies itself (method, labeled cases, seeds,
    run folder) and what changes no result (logging, progress bar, ``data.num_workers``, ...).
    A per-method setting this combination does not take as stated is ``None`` (the method's
    default), and ``checkpoint`` is recorded as ``--checkpoint``.

    Returns:
        ``{"--checkpoint": "best", "model.max_iterations": 4, ...}``, keys sorted.
    """
    settings: dict[str, Any] = {"--checkpoint": checkpoint}
    for key, value in stated.items():
        if not _affects_results(key):
            continue
        name = key.removeprefix("model.")
        if key.startswith("model.") and name in PER_METHOD_SETTINGS:
            if name not in METHOD_DEFAULTS[combo.method] or key in from_files:
                value = None  # the method's default (combination_job gives null)
        settings[key] = value if key in from_files else _typed(value)
    return json.loads(json.dumps(dict(sorted(settings.items())), default=str))


def settings_conflicts(
    recorded: dict[str, Any], current: dict[str, Any]
) -> list[tuple[str, Any, Any]]:
    """``(setting, recorded value, current value)`` of every setting that differs.

    A setting stated on one side only shows :data:`NOT_SET` on the other.
    """
    return [
        (key, recorded.get(key, NOT_SET), current.get(key, NOT_SET))
        for key in sorted(set(recorded) | set(current))
        if recorded.get(key, NOT_SET) != current.get(key, NOT_SET)
    ]
