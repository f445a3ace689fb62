"""Which checkpoint a command uses, and whether it fits the run (the resume policy).

:func:`find_run_checkpoint` turns ``--ckpt_path`` (a file, ``last``, ``best`` or nothing) into
the file a subcommand loads, or refuses with a message naming the run folder and the runs that
have checkpoints. :func:`checkpoint_conflict` compares a checkpoint's stored settings and
state-dict shapes with the model built for the run, so a checkpoint that cannot be loaded is
refused before anything runs. The settings a checkpoint may and may not override are listed
here (:data:`RUNTIME_MODEL_SETTINGS`, :data:`STRUCTURAL_SETTINGS`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint

from advmim_lightning.run.folders import RunFolder, some

log = logging.getLogger(__name__)

#: Model settings that ``validate``/``test``/``predict``/a resumed ``fit`` may change from the
#: training run when given with ``--ckpt_path`` (all others come from the checkpoint).
RUNTIME_MODEL_SETTINGS = (
    "eval_network",
    "eval_interpolation",
    "eval_slice_batch",
    "nsd_tolerance",
    "nsd_zero_below_dice",
    "max_iterations",
    "nonfinite_check",
    "max_skipped_in_a_row",
    "optimizer_impl",
    "channels_last",
    "compile_networks",
    "cuda_graph",
    "stream_batching",
)

#: Subcommands that evaluate trained weights (they need a checkpoint).
EVALUATION_COMMANDS = ("validate", "test", "predict")

#: Settings a checkpoint's weights depend on: ``(hyper-parameter, how the user sets it)``.
#: A checkpoint whose value differs from the run's is refused (:func:`checkpoint_conflict`).
STRUCTURAL_SETTINGS = (
    ("method", "model.method"),
    ("num_classes", "data.num_classes"),
    ("in_channels", "the data's image channels (data.in_channels)"),
    ("image_size", "data.image_size"),
    ("discriminator_base_channels", "model.discriminator_base_channels"),
    ("cnn", "model.cnn"),
    ("transformer", "model.transformer"),
)


@dataclass(frozen=True)
class StoredCheckpoint:
    """What the checks need of a checkpoint, without holding its tensors.

    Attributes:
        path: The file.
        hparams: Its stored ``hyper_parameters``.
        shapes: Shape of every ``state_dict`` entry.
    """

    path: Path
    hparams: dict[str, Any]
    shapes: dict[str, tuple[int, ...]]

    @classmethod
    def of(cls, path: str | Path, checkpoint: dict[str, Any]) -> StoredCheckpoint:
        """Keep the hyper-parameters and state-dict shapes of a checkpoint."""
        shapes = {
            str(k): tuple(getattr(v, "shape", ())) for k, v in checkpoint["state_dict"].items()
        }
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        return cls(Path(path), hparams, shapes)


def checkpoint_conflict(checkpoint: StoredCheckpoint, model: Any) -> str | None:
    """Why ``checkpoint``'s weights cannot be loaded into ``model``, or None when they can.

    The settings of :data:`STRUCTURAL_SETTINGS` are compared first, so the message names the
    setting in conflict and its two values; then every state-dict entry and shape.

    Args:
        checkpoint: The checkpoint's hyper-parameters and shapes.
        model: The ``AdvMIMModule`` built for this run.

    Returns:
        One line naming the checkpoint, the setting (or state-dict entry) and both values.
    """
    head = f"checkpoint {checkpoint.path} does not fit this run"
    current = dict(getattr(model, "hparams", {}))
    for key, setting in STRUCTURAL_SETTINGS:
        if key not in checkpoint.hparams or key not in current:
            continue
        difference = _first_difference(checkpoint.hparams[key], current[key], setting)
        if difference is not None:
            where, stored, here = difference
            return f"{head}: {where} is {stored!r} in the checkpoint but {here!r} here"
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for key in sorted(shapes.keys() & checkpoint.shapes.keys()):
        if shapes[key] != checkpoint.shapes[key]:
            return (
                f"{head}: state-dict entry {key} has shape {list(checkpoint.shapes[key])} in "
                f"the checkpoint but {list(shapes[key])} in the model built here"
            )
    only_stored = sorted(checkpoint.shapes.keys() - shapes.keys())
    only_here = sorted(shapes.keys() - checkpoint.shapes.keys())
    if only_stored or only_here:
        return (
            f"{head}: state-dict entries only in the checkpoint: {some(only_stored)}; only in "
            f"the model built here: {some(only_here)}"
        )
    return None


def _first_difference(stored: Any, here: Any, where: str) -> tuple[str, Any, Any] | None:
    """The first place where two hyper-parameter values differ: ``(where, stored, here)``.

    A network's ``pretrained`` source is not compared: the checkpoint's weights replace the
    initial ones (and the command line does not read that source when a checkpoint is given).
    """
    if where.endswith(".pretrained"):
        return None
    stored, here = _plain(stored), _plain(here)
    if isinstance(stored, dict) and isinstance(here, dict):
        for key in [*stored, *(k for k in here if k not in stored)]:
            difference = _first_difference(stored.get(key), here.get(key), f"{where}.{key}")
            if difference is not None:
                return difference
        return None
    return None if stored == here else (where, stored, here)


def _plain(value: Any, key: str = "") -> Any:
    """``value`` made comparable: tuples as lists, namespaces as dicts, class paths canonical.

    A ``class_path`` is written as the class's own module and name, so the same class named
    through a package (``advmim_lightning.networks.UNet``) or its module
    (``advmim_lightning.networks.unet.UNet``) compares equal.
    """
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        return {str(k): _plain(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if key.rpartition(".")[2] == "class_path" and isinstance(value, str):
        return _canonical_class_path(value)
    return value


def _class_named(class_path: str) -> type | None:
    """The class a dotted path names (importing its module), or None when it names none."""
    import importlib

    module_name, _, name = class_path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        return None
    return found if isinstance(found, type) else None


def _canonical_class_path(class_path: str) -> str:
    cls = _class_named(class_path)
    return class_path if cls is None else f"{cls.__module__}.{cls.__qualname__}"


def find_run_checkpoint(
    subcommand: str,
    ckpt_path: str | Path | None,
    runs_dir: Path,
    run_name: str,
    allow_random_weights: bool = False,
    own_checkpoint_callback: bool = False,
) -> Path | None:
    """The checkpoint file a subcommand uses, or None to start from initial weights.

    - a path: that file (checked later, like every checkpoint);
    - ``last``: ``<runs_dir>/<run_name>/checkpoints/last.ckpt``, or a newer SLURM requeue
      checkpoint ``<run folder>/hpc_ckpt_<n>.ckpt``. When there is none, ``fit``
      starts the run from iteration 0 (with a warning) and an evaluation is refused;
    - ``best``: the ``checkpoints/best-*.ckpt`` file of the run with the highest stored
      ``val/dice_mean`` (the run keeps one; several appear when a run was restarted without
      resuming), the latest step on a tie;
    - none: ``fit`` starts from initial weights; ``validate``/``test``/``predict`` are refused
      unless ``allow_random_weights``.

    Raises:
        ValueError: Naming the run folder looked in and the runs that have checkpoints, when
            the requested checkpoint is not there; on Lightning's ``hpc``/``registry`` values.
    """
    run = RunFolder(runs_dir, run_name)
    if ckpt_path is None:
        if subcommand not in EVALUATION_COMMANDS:
            return None
        if allow_random_weights:
            log.warning(
                "advmim %s runs with untrained (randomly initialised) networks: no "
                "--ckpt_path and --allow_random_weights true",
                subcommand,
            )
            return None
        raise ValueError(
            f"advmim {subcommand} needs trained weights and has no --ckpt_path: give last, "
            f"best or a checkpoint file ({run.describe_checkpoints()}), or "
            "--allow_random_weights true to run untrained networks on purpose"
        )
    word = str(ckpt_path)
    if word in ("hpc", "registry") or word.startswith("registry:"):
        raise ValueError(
            f"--ckpt_path {word} is not supported by advmim: give last, best or a checkpoint file"
        )
    if word not in ("last", "best"):
        return Path(word)
    if own_checkpoint_callback:
        raise ValueError(
            f"--ckpt_path {word} finds the checkpoints of the run's default checkpoint "
            "callback, and this config gives its own ModelCheckpoint: give the file's path"
        )
    if word == "last":
        # On SLURM, Lightning answers the preemption signal by saving hpc_ckpt_<n>.ckpt in the
        # run folder before requeueing: the newest of those and last.ckpt is the run's state.
        found = run.resume_candidates()
        if found:
            return max(found, key=lambda p: p.stat().st_mtime)
        if subcommand == "fit":
            log.warning(
                "--ckpt_path last: %s has no checkpoints/last.ckpt yet; the run starts at "
                "iteration 0",
                run.path,
            )
            return None
        raise ValueError(
            f"--ckpt_path last: no checkpoints/last.ckpt in the run; {run.describe_checkpoints()}"
        )
    candidates = run.checkpoint_files("best-*.ckpt")
    if not candidates:
        raise ValueError(
            "--ckpt_path best: no checkpoints/best-*.ckpt in the run (one is saved at each "
            f"validation that improves val/dice_mean); {run.describe_checkpoints()}"
        )
    if len(candidates) == 1:
        return candidates[0]
    from advmim_lightning.run.checkpoints import read_checkpoint

    ranked = []
    for candidate in candidates:
        try:
            checkpoint = read_checkpoint(candidate)
        except (FileNotFoundError, ValueError) as err:
            raise ValueError(f"--ckpt_path best: {err}") from err
        score = _stored_score(checkpoint)
        if score is None:
            raise ValueError(
                f"--ckpt_path best: {candidate} stores no val/dice_mean score, so the best of "
                f"{len(candidates)} best-*.ckpt files cannot be chosen; give the file's path"
            )
        ranked.append((score, int(checkpoint.get("global_step", 0)), candidate))
    score, _, best = max(ranked)
    log.info("--ckpt_path best: %s (val/dice_mean %.4f, of %d)", best, score, len(ranked))
    return best


def _stored_score(checkpoint: dict[str, Any]) -> float | None:
    """The ``val/dice_mean`` a checkpoint callback recorded when it saved this file."""
    for state in (checkpoint.get("callbacks") or {}).values():
        if isinstance(state, dict) and state.get("monitor") == "val/dice_mean":
            score = state.get("current_score")
            return None if score is None else float(score)
    return None


def stated_model_settings(given_args: list[Any]) -> set[str]:
    """``model.*`` keys the config files or the command line state (not defaults).

    Read from the words themselves (``--model.x``, ``--model.x=v`` and the ``model:``
    sections of ``-c`` files), not by a second parse, which would fail on links whose
    source is left at its default.
    """
    words = [str(w) for w in given_args]
    stated: set[str] = set()
    for index, word in enumerate(words):
        if word.startswith("--model."):
            stated.add(word[len("--model.") :].split("=", 1)[0])
        elif word in ("-c", "--config") and index + 1 < len(words):
            stated |= _model_keys_in_config(Path(words[index + 1]))
        elif word == "--model" and index + 1 < len(words):
            stated |= _model_keys_in_config(Path(words[index + 1]), section=None)
        elif word.startswith("--config="):
            stated |= _model_keys_in_config(Path(word.split("=", 1)[1]))
    return stated


def _gives_own_checkpoint_callback(config: Any) -> bool:
    """Whether the trainer config lists its own ``ModelCheckpoint`` (or subclass)."""
    callbacks = (config.get("trainer") or {}).get("callbacks") or []
    for callback in callbacks if isinstance(callbacks, list) else [callbacks]:
        cls = _class_named(str(getattr(callback, "class_path", None) or ""))
        if cls is not None and issubclass(cls, ModelCheckpoint):
            return True
    return False


def _model_keys_in_config(path: Path, section: str | None = "model") -> set[str]:
    """Dotted keys of the ``model:`` section of a YAML config (empty when unreadable).

    Also finds it under a subcommand (``fit: model: ...``); ``section=None`` reads a file
    given to ``--model`` itself.
    """
    import yaml

    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, ValueError, yaml.YAMLError):
        return set()
    if not isinstance(config, dict):
        return set()
    if section is None:
        return set(_dotted_keys(config))
    sections = [config, *(config[k] for k in ("fit", "validate", "test", "predict") if k in config)]
    keys: set[str] = set()
    for part in sections:
        model = part.get("model") if isinstance(part, dict) else None
        if isinstance(model, dict):
            keys |= set(_dotted_keys(model))
    return keys


def _dotted_keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        keys += _dotted_keys(value, f"{dotted}.") if isinstance(value, dict) else [dotted]
    return keys


def keep_stated_settings(
    model: Any, subcommand: str, path: str | Path, stated: set[str], before: Any
) -> None:
    """Put the stated run-time settings back over a checkpoint's; refuse or report others.

    LightningCLI replaces the model settings by those stored in the checkpoint, so the weights
    fit the networks. The settings in :data:`RUNTIME_MODEL_SETTINGS` (evaluation and run
    length) are put back where the config files or the command line state them. A resumed
    ``fit`` refuses a stated setting of :data:`STRUCTURAL_SETTINGS` that differs from the
    checkpoint's (the run would change its method or networks half-way); any other stated
    setting that differs is reported in a warning, never dropped in silence.

    Args:
        model: The ``model`` section of the parsed config, after the checkpoint's settings.
        subcommand: The command.
        path: The checkpoint.
        stated: The model settings the words state (:func:`stated_model_settings`).
        before: The ``model`` section before the checkpoint's settings replaced it.

    Raises:
        ValueError: When a resumed ``fit`` states a structural setting that differs from the
            checkpoint's.
    """
    if Path(path).is_file():
        # The checkpoint holds the weights: a network's ImageNet source is not read (no
        # Hugging Face cache or file is needed to test, predict or resume).
        for network in ("cnn", "transformer"):
            key = f"{network}.init_args.pretrained"
            if key in model:
                model[key] = None
    ignored = []
    for key in sorted(stated):
        if key.endswith(".init_args.pretrained"):
            continue  # where initial weights come from: the checkpoint's replace them
        if key not in before or key not in model:
            continue
        if _plain(before[key], key) == _plain(model[key], key):
            continue
        top = key.split(".")[0]
        if top in RUNTIME_MODEL_SETTINGS:
            model[key] = before[key]
        elif subcommand == "fit" and top in dict(STRUCTURAL_SETTINGS):
            raise ValueError(
                f"checkpoint {path} does not fit this run: model.{key} is "
                f"{_plain(model[key], key)!r} in the checkpoint but "
                f"{_plain(before[key], key)!r} "
                "here; a resumed run keeps its method and networks (start a new run with "
                "another --run_name and no --ckpt_path to train this one)"
            )
        else:
            ignored.append(f"model.{key}={before[key]!r} (checkpoint: {model[key]!r})")
    if ignored:
        log.warning(
            "--ckpt_path %s fixes the model's settings; the checkpoint's values replace "
            "%s. Only %s can differ from the training run.",
            path,
            ", ".join(ignored),
            ", ".join(RUNTIME_MODEL_SETTINGS),
        )
