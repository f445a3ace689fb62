"""The ``advmim`` command line: LightningCLI for fit / validate / test / predict.

``advmim fit -c configs/quickstart.yaml`` trains; ``validate``, ``test`` and ``predict`` take the
same configs plus ``--ckpt_path``. Runs live in ``<runs_dir>/<run_name>/`` (resolved config,
``checkpoints/last.ckpt`` and the best checkpoint, ``metrics.csv``, offline wandb files), so
``--ckpt_path last`` resumes the named run. ``advmim export`` and ``advmim prepare`` are plain
subcommands beside the Lightning ones.

Every checkpoint a command uses (a file, ``last`` or ``best``) is found and checked before
anything runs: it must exist, load safely and fit the run (:func:`checkpoint_conflict`).
``validate``/``test``/``predict`` refuse to run without one unless ``--allow_random_weights
true``. A run folder is held by one process at a time (:class:`~advmim_lightning.paths.
RunFolderLock`). An evaluation writes its own ``<subcommand>_config.yaml``, never the fit's
``config.yaml``.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from jsonargparse.typing import NonNegativeInt
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from advmim_lightning.callbacks import PredictionWriter, RunCheckpoint, ValidationPanels
from advmim_lightning.data import AdvMIMDataModule
from advmim_lightning.module import AdvMIMModule
from advmim_lightning.paths import RunFolderLock, ensure_writable_folder, launching_process
from advmim_lightning.quiet import quiet_known_noise

#: Errors that describe bad input (data, paths, arguments, a diverged run): the command line
#: prints their message and exits with status 1 instead of a traceback (``ADVMIM_DEBUG=1``
#: shows it) when the library raised them on purpose; from anywhere else (torch, NumPy, a
#: bug) the traceback is kept.
USER_ERRORS = (ValueError, OSError, FloatingPointError)
_PACKAGE_DIR = Path(__file__).resolve().parent

#: Model settings that ``validate``/``test``/``predict``/a resumed ``fit`` may change from the
#: training run when given with ``--ckpt_path`` (all others come from the checkpoint).
RUNTIME_MODEL_SETTINGS = (
    "eval_network",
    "eval_interpolation",
    "eval_slice_batch",
    "nsd_tolerance",
    "max_iterations",
    "nonfinite_check",
    "max_skipped_in_a_row",
    "optimizer_impl",
    "channels_last",
    "compile_networks",
    "cuda_graph",
)
#: The module's networks and the classes it builds when one is left at ``None``.
DEFAULT_NETWORKS = {
    "cnn": "advmim_lightning.networks.UNet",
    "transformer": "advmim_lightning.networks.SwinUNet",
}
_PARSER_WRAPPERS = ("Does not validate against any of the Union subtypes", "Problem with given")

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

log = logging.getLogger(__name__)

EXTRA_COMMANDS = {
    "export": "advmim_lightning.export",
    "prepare": "advmim_lightning.data.prepare",
    "compare": "advmim_lightning.compare",
}


class AdvMIMCLI(LightningCLI):
    """LightningCLI with the library's links between data and model, and run folders."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # LightningCLI runs the subcommand inside __init__: the run folder's lock (taken in
        # before_instantiate_classes) is given back when it ends, also on an error.
        try:
            super().__init__(*args, **kwargs)
        finally:
            self._release_run_folder()

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--run_name", type=str, default="advmim", help="Name of the run and of its folder."
        )
        parser.add_argument(
            "--runs_dir", type=str, default="runs", help="Folder that holds one folder per run."
        )
        parser.add_argument(
            "--wandb_mode",
            type=str,
            default="offline",
            choices=["offline", "online", "disabled"],
            help="Weights & Biases: offline (default; `wandb sync` later), online or disabled.",
        )
        parser.add_argument(
            "--wandb_project", type=str, default="advmim-lightning", help="wandb project name."
        )
        parser.add_argument(
            "--checkpoint_every",
            type=NonNegativeInt,
            default=0,
            help=(
                "Also save checkpoints/last.ckpt every this many iterations, so a killed run "
                "loses at most that much work (0: only after validation and at the end)."
            ),
        )
        # Stated once, on the data side, and linked to the model and to networks given by
        # class_path (a network left at its default is built by the module from these).
        parser.link_arguments("data.num_classes", "model.num_classes")
        parser.link_arguments("data.image_size", "model.image_size")
        parser.link_arguments("data.num_classes", "model.cnn.init_args.num_classes")
        parser.link_arguments("data.num_classes", "model.transformer.init_args.num_classes")
        parser.link_arguments("data.image_size", "model.transformer.init_args.img_size")
        # The channel count is known once the data module has read the dataset (NIfTI:
        # dataset.json), so it is linked at instantiation; networks left at their default are
        # spelled out as class_path specs first (_spell_out_default_networks).
        # (Declared transformer first: jsonargparse then builds the cnn first, the order in
        # which the module builds default networks, so seeded weights do not change.)
        parser.link_arguments("data.in_channels", "model.in_channels", apply_on="instantiate")
        for network in reversed(DEFAULT_NETWORKS):
            parser.link_arguments(
                "data.in_channels", f"model.{network}.init_args.in_channels", apply_on="instantiate"
            )
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        parser.link_arguments("model.method", "data.require_unlabeled", compute_fn=_needs_unlabeled)
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        parser.add_lightning_class_args(ValidationPanels, "panels")

    def _spell_out_default_networks(self) -> None:
        """Give each network left at ``None`` as its default class with the linked arguments.

        ``AdvMIMModule`` builds a ``None`` network itself from its ``num_classes``,
        ``in_channels`` and ``image_size``; here the same network is stated as a class_path
        spec, so that the data's channel count (linked at instantiation to
        ``model.<network>.init_args.in_channels``) reaches it exactly as it reaches networks
        given by class_path (a link to a ``None`` target cannot be applied).
        """
        config = self.config[self.subcommand] if self.subcommand else self.config
        model = config["model"]
        for network, class_path in DEFAULT_NETWORKS.items():
            if model.get(network) is not None:
                continue
            # in_channels: a placeholder the data's value replaces at instantiation
            init_args = Namespace(num_classes=model["num_classes"], in_channels=1)
            if network == "transformer":
                init_args["img_size"] = list(model["image_size"])
            model[network] = Namespace(class_path=class_path, init_args=init_args)

    def _prepare_subcommand_parser(
        self, klass: type, subcommand: str, **kwargs: Any
    ) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand in EVALUATION_COMMANDS:
            parser.add_argument(
                "--allow_random_weights",
                type=bool,
                default=False,
                help=(
                    "Run without --ckpt_path, with untrained (randomly initialised) networks, "
                    "on purpose (a smoke test). Off: no checkpoint is an error."
                ),
            )
        return parser

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The configured trainer, plus the run folder's loggers and checkpoints by default.

        Unless the config says otherwise: ``default_root_dir`` is ``<runs_dir>/<run_name>``,
        the loggers are a CSV logger (``metrics.csv``) and an offline wandb logger in that
        folder, and a ``ModelCheckpoint`` keeps ``checkpoints/last.ckpt`` and the best
        ``val/dice_mean`` there, which is where ``--ckpt_path last`` looks.

        When a subcommand runs, the checkpoint is first checked against the model built
        (:func:`checkpoint_conflict`), before the trainer exists and anything is written. An
        evaluation's config and hyper-parameters go to ``<subcommand>_config.yaml`` and
        ``<subcommand>_hparams.yaml``; the fit's are never rewritten by it.

        Raises:
            ValueError: When the checkpoint does not fit the model built for this run.
        """
        config = self.config[self.subcommand] if self.subcommand else self.config
        if self.subcommand and self._checkpoint is not None:
            conflict = checkpoint_conflict(self._checkpoint, self.model)
            if conflict:
                raise ValueError(conflict)
        run_dir = Path(config["runs_dir"]) / config["run_name"]
        ensure_writable_folder(run_dir, "run folder (--runs_dir/--run_name)")
        subcommand = self.subcommand or "fit"
        self.save_config_kwargs = {
            **self.save_config_kwargs,
            "config_filename": run_file_name(subcommand, "config.yaml"),
        }
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        if trainer_cfg.get("default_root_dir") is None:
            kwargs["default_root_dir"] = str(run_dir)
        if trainer_cfg.get("logger") in (None, True):
            kwargs["logger"] = _default_loggers(
                run_dir,
                config["run_name"],
                config["wandb_mode"],
                config["wandb_project"],
                hparams_file=run_file_name(subcommand, "hparams.yaml"),
            )
        callbacks = trainer_cfg.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        wants_checkpoints = trainer_cfg.get("enable_checkpointing") is not False
        if wants_checkpoints and not any(isinstance(c, ModelCheckpoint) for c in callbacks):
            callbacks.append(
                RunCheckpoint(
                    dirpath=run_dir / "checkpoints",
                    filename="best-{step}",
                    monitor="val/dice_mean",
                    mode="max",
                    save_last=True,
                    every_n_iterations=config["checkpoint_every"],
                    # last.ckpt is always this run's: a resumed run that was moved or copied
                    # (its stored dirpath differs) would otherwise write last-v1.ckpt and
                    # leave the old last.ckpt for the next --ckpt_path last
                    enable_version_counter=False,
                )
            )
        elif config["checkpoint_every"]:
            log.warning(
                "--checkpoint_every %d is ignored: it applies to the run's default checkpoint "
                "callback, and this config gives its own ModelCheckpoint or disables "
                "checkpointing",
                config["checkpoint_every"],
            )
        kwargs["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)

    def before_instantiate_classes(self) -> None:
        """Hold the run folder before anything is built or written (when a subcommand runs).

        The launching process takes :class:`~advmim_lightning.paths.RunFolderLock` (DDP
        workers it starts do not); it is released when the command ends, however it ends.
        Networks left at ``None`` are then stated as their default classes
        (:meth:`_spell_out_default_networks`).
        """
        if self.subcommand and launching_process():
            config = self.config[self.subcommand]
            run_dir = Path(config["runs_dir"]) / config["run_name"]
            ensure_writable_folder(run_dir, "run folder (--runs_dir/--run_name)")
            self._lock = RunFolderLock(run_dir, f"advmim {self.subcommand}").acquire()
        self._spell_out_default_networks()

    def _release_run_folder(self) -> None:
        lock, self._lock = getattr(self, "_lock", None), None
        if lock is not None:
            lock.release()

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        self._given_args = sys.argv[1:] if args is None else args
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """Find and check the checkpoint, then take the model's settings from it.

        ``--ckpt_path last`` and ``best`` are found in the run folder
        (:func:`find_run_checkpoint`); every checkpoint, found or given, is read with
        ``weights_only=True`` (:func:`~advmim_lightning.export.read_checkpoint`), so a missing,
        empty, truncated or foreign file fails with its name before anything runs.
        ``validate``/``test``/``predict`` without a checkpoint fail unless
        ``--allow_random_weights true``.

        LightningCLI then replaces the model settings by those stored in the checkpoint, so
        the weights fit the networks. The settings in :data:`RUNTIME_MODEL_SETTINGS`
        (evaluation and run length) are put back where the config files or the command line
        state them. A resumed ``fit`` refuses a stated setting of
        :data:`STRUCTURAL_SETTINGS` that differs from the checkpoint's (the run would change
        its method or networks half-way); any other stated setting that differs is reported
        in a warning, never dropped in silence.

        Raises:
            ValueError: Naming the checkpoint or the run folder and what is wrong.
        """
        self._checkpoint: StoredCheckpoint | None = None
        self._lock: RunFolderLock | None = None
        subcommand = self.config.get("subcommand")
        if not subcommand:
            super()._parse_ckpt_path()
            return
        config = self.config[subcommand]
        given = config.get("ckpt_path")
        path = find_run_checkpoint(
            subcommand,
            given,
            Path(config["runs_dir"]),
            config["run_name"],
            allow_random_weights=bool(config.get("allow_random_weights", False)),
            own_checkpoint_callback=_gives_own_checkpoint_callback(config),
        )
        config["ckpt_path"] = None if path is None else str(path)
        if path is None:
            if subcommand == "fit" and not (config.get("trainer") or {}).get("fast_dev_run"):
                _refuse_a_second_run_in(Path(config["runs_dir"]) / config["run_name"])
            return
        from advmim_lightning.export import read_checkpoint

        try:
            self._checkpoint = StoredCheckpoint.of(path, read_checkpoint(path))
        except (FileNotFoundError, ValueError) as err:
            raise ValueError(f"--ckpt_path {given}: {err}") from err
        stated = self._stated_model_settings()
        before = self.config[subcommand]["model"].clone()
        super()._parse_ckpt_path()
        model = self.config[subcommand]["model"]
        if self._checkpoint_exists(config, str(path)):
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

    @staticmethod
    def _checkpoint_exists(config: Any, path: str) -> bool:
        """Whether ``--ckpt_path`` names a checkpoint that will be loaded (``last``: the run
        folder's ``checkpoints/last.ckpt``, which a first run with ``--ckpt_path last`` lacks)."""
        if path == "last":
            run_dir = Path(config["runs_dir"]) / config["run_name"]
            return (run_dir / "checkpoints" / "last.ckpt").is_file()
        return Path(path).is_file()

    def _stated_model_settings(self) -> set[str]:
        """``model.*`` keys the config files or the command line state (not defaults).

        Read from the words themselves (``--model.x``, ``--model.x=v`` and the ``model:``
        sections of ``-c`` files), not by a second parse, which would fail on links whose
        source is left at its default.
        """
        words = [str(w) for w in self._given_args]
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


def run_file_name(subcommand: str, name: str) -> str:
    """``name`` for ``fit``, ``<subcommand>_<name>`` for an evaluation (``test_config.yaml``)."""
    return name if subcommand == "fit" else f"{subcommand}_{name}"


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
        """Keep the hyper-parameters and state-dict shapes of a loaded checkpoint."""
        shapes = {
            str(k): tuple(getattr(v, "shape", ())) for k, v in checkpoint["state_dict"].items()
        }
        return cls(Path(path), dict(checkpoint.get("hyper_parameters") or {}), shapes)


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
            f"{head}: state-dict entries only in the checkpoint: {_some(only_stored)}; only in "
            f"the model built here: {_some(only_here)}"
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


def _some(names: list[str], shown: int = 4) -> str:
    if not names:
        return "none"
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


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
    run_dir = runs_dir / run_name
    folder = run_dir / "checkpoints"
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
            f"best or a checkpoint file ({_checkpoints_of(run_dir, runs_dir)}), or "
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
        found = [p for p in (folder / "last.ckpt", *run_dir.glob("hpc_ckpt_*.ckpt")) if p.is_file()]
        if found:
            return max(found, key=lambda p: p.stat().st_mtime)
        if subcommand == "fit":
            log.warning(
                "--ckpt_path last: %s has no checkpoints/last.ckpt yet; the run starts at "
                "iteration 0",
                run_dir,
            )
            return None
        raise ValueError(
            f"--ckpt_path last: no checkpoints/last.ckpt in the run; "
            f"{_checkpoints_of(run_dir, runs_dir)}"
        )
    candidates = sorted(folder.glob("best-*.ckpt")) if folder.is_dir() else []
    if not candidates:
        raise ValueError(
            "--ckpt_path best: no checkpoints/best-*.ckpt in the run (one is saved at each "
            f"validation that improves val/dice_mean); {_checkpoints_of(run_dir, runs_dir)}"
        )
    if len(candidates) == 1:
        return candidates[0]
    from advmim_lightning.export import read_checkpoint

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


def _refuse_a_second_run_in(run_dir: Path) -> None:
    """Refuse a fit from initial weights into a run folder that holds checkpoints.

    It would append a second training curve to ``metrics.csv``, replace ``config.yaml`` and
    leave the old ``last.ckpt`` beside the new run's ``last-v1.ckpt``, so that ``--ckpt_path
    last`` would then pick the old run's weights.

    Raises:
        ValueError: Naming the folder, its checkpoints and the ways out.
    """
    folder = run_dir / "checkpoints"
    found = sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []
    if found:
        raise ValueError(
            f"the run folder {run_dir} already holds a run (checkpoints/"
            f"{', checkpoints/'.join(found)}); a new fit would mix two runs in one record: "
            "resume it with --ckpt_path last, or choose another --run_name (or delete the "
            "folder to train it again)"
        )


def _stored_score(checkpoint: dict[str, Any]) -> float | None:
    """The ``val/dice_mean`` a checkpoint callback recorded when it saved this file."""
    for state in (checkpoint.get("callbacks") or {}).values():
        if isinstance(state, dict) and state.get("monitor") == "val/dice_mean":
            score = state.get("current_score")
            return None if score is None else float(score)
    return None


def _checkpoints_of(run_dir: Path, runs_dir: Path) -> str:
    """What ``run_dir`` holds, or which runs of ``runs_dir`` have checkpoints, for messages."""
    folder = run_dir / "checkpoints"
    here = sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []
    if here:
        return f"the run folder {run_dir} holds checkpoints/{', checkpoints/'.join(here)}"
    looked = f"the run folder {run_dir} has no checkpoint"
    if not runs_dir.is_dir():
        return f"{looked}, and the runs folder {runs_dir} does not exist"
    runs = sorted(
        p.name for p in runs_dir.iterdir() if p.is_dir() and any(p.glob("checkpoints/*.ckpt"))
    )
    if not runs:
        return f"{looked}, nor has any other run in {runs_dir}"
    return f"{looked}; runs with checkpoints in {runs_dir}: {_some(runs, 10)}"


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


def _needs_unlabeled(method: str) -> bool:
    return method != "supervised"


def _default_loggers(
    run_dir: Path, run_name: str, wandb_mode: str, project: str, hparams_file: str = "hparams.yaml"
) -> list:
    from advmim_lightning.loggers import RunCSVLogger

    loggers: list = [
        RunCSVLogger(save_dir=str(run_dir), name="", version="", hparams_file=hparams_file)
    ]
    if wandb_mode != "disabled":
        from lightning.pytorch.loggers import WandbLogger

        run_dir.mkdir(parents=True, exist_ok=True)
        wandb_logger = WandbLogger(
            name=run_name,
            project=project,
            save_dir=str(run_dir),
            offline=wandb_mode == "offline",
        )
        # Lightning passes anonymous=None to wandb.init, which wandb (0.31 here) answers with "The
        # anonymous setting has no effect" on every run: leave the unset setting out instead.
        if wandb_logger._wandb_init.get("anonymous", "") is None:
            del wandb_logger._wandb_init["anonymous"]
        loggers.append(wandb_logger)
    return loggers


def build_cli(args: list[str] | None = None, run: bool = True) -> AdvMIMCLI:
    """The LightningCLI object for ``args`` (fit / validate / test / predict).

    Args:
        args: Command-line words, e.g. ``["fit", "-c", "configs/quickstart.yaml"]``;
            ``None`` reads ``sys.argv``.
        run: Run the subcommand (``False``: only parse and instantiate, no subcommand then).

    Returns:
        The CLI; its ``trainer``, ``model`` and ``datamodule`` are useful in tests and notebooks.
    """
    quiet_known_noise()
    return AdvMIMCLI(
        AdvMIMModule,
        AdvMIMDataModule,
        args=args,
        run=run,
        seed_everything_default=0,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"max_epochs": -1},
        parser_kwargs={
            "description": (
                "AdvMIM semi-supervised segmentation. Subcommands: fit, validate, test, "
                "predict (Lightning) and export, prepare, compare (see `advmim export --help`)."
            )
        },
    )


def main(args: list[str] | None = None) -> None:
    """Run the ``advmim`` command line (the console script and ``python -m advmim_lightning``).

    Args:
        args: Command-line words (default: ``sys.argv[1:]``). Tests call ``main([...])``.
    """
    argv = sys.argv[1:] if args is None else list(args)
    _show_library_messages()
    try:
        if argv and argv[0] in EXTRA_COMMANDS:
            _run_extra_command(argv[0], argv[1:])
        else:
            build_cli(None if args is None else argv)
    except USER_ERRORS as err:
        user_error = _unwrap(err)
        if os.environ.get("ADVMIM_DEBUG", "0") not in ("", "0") or not _raised_here(user_error):
            raise
        raise SystemExit(
            f"advmim: error: {user_error}\n(set ADVMIM_DEBUG=1 to see the full traceback)"
        ) from err


def _show_library_messages() -> None:
    """Print the library's INFO messages (the weights a network loaded, data loaded, files
    written) on the console, as Lightning does for its own; an application that configured
    logging itself keeps its settings."""
    package = logging.getLogger("advmim_lightning")
    if package.level == logging.NOTSET:
        package.setLevel(logging.INFO)
    if not package.handlers and not logging.getLogger().hasHandlers():
        package.addHandler(logging.StreamHandler())
        package.propagate = False


def _run_extra_command(name: str, argv: list[str]) -> None:
    """Run ``advmim export|prepare`` (their errors reach :func:`main`'s one-line report)."""
    import importlib

    status = importlib.import_module(EXTRA_COMMANDS[name]).main(argv)
    if status:
        raise SystemExit(status)


def _unwrap(err: BaseException) -> BaseException:
    """``err``, or the error inside jsonargparse's report on a failed class init."""
    while isinstance(err.__cause__, USER_ERRORS) and str(err).startswith(_PARSER_WRAPPERS):
        err = err.__cause__
    return err


def _raised_here(err: BaseException) -> bool:
    """Whether the library raised ``err`` itself (its innermost frame is in the package)."""
    import traceback

    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and Path(frames[-1].filename).resolve().is_relative_to(_PACKAGE_DIR)


if __name__ == "__main__":  # pragma: no cover
    main()
