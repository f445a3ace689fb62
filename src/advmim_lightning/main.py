"""The ``advmim`` command line: LightningCLI for fit / validate / test / predict.

``advmim fit -c configs/quickstart.yaml`` trains; ``validate``, ``test`` and ``predict`` take the
same configs plus ``--ckpt_path``. Runs live in ``<runs_dir>/<run_name>/`` (resolved config,
``checkpoints/last.ckpt`` and the best checkpoint, ``metrics.csv``, offline wandb files), so
``--ckpt_path last`` resumes the named run. ``advmim export`` and ``advmim prepare`` are plain
subcommands beside the Lightning ones.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from jsonargparse.typing import NonNegativeInt
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from advmim_lightning.callbacks import PredictionWriter, RunCheckpoint, ValidationPanels
from advmim_lightning.data import AdvMIMDataModule
from advmim_lightning.module import AdvMIMModule
from advmim_lightning.paths import ensure_writable_folder
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
)
_PARSER_WRAPPERS = ("Does not validate against any of the Union subtypes", "Problem with given")

log = logging.getLogger(__name__)

EXTRA_COMMANDS = {
    "export": "advmim_lightning.export",
    "prepare": "advmim_lightning.data.prepare",
}


class AdvMIMCLI(LightningCLI):
    """LightningCLI with the library's links between data and model, and run folders."""

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
        parser.link_arguments("data.in_channels", "model.in_channels", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        parser.link_arguments("model.method", "data.require_unlabeled", compute_fn=_needs_unlabeled)
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        parser.add_lightning_class_args(ValidationPanels, "panels")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The configured trainer, plus the run folder's loggers and checkpoints by default.

        Unless the config says otherwise: ``default_root_dir`` is ``<runs_dir>/<run_name>``,
        the loggers are a CSV logger (``metrics.csv``) and an offline wandb logger in that
        folder, and a ``ModelCheckpoint`` keeps ``checkpoints/last.ckpt`` and the best
        ``val/dice_mean`` there, which is where ``--ckpt_path last`` looks.
        """
        config = self.config[self.subcommand] if self.subcommand else self.config
        run_dir = Path(config["runs_dir"]) / config["run_name"]
        ensure_writable_folder(run_dir, "run folder (--runs_dir/--run_name)")
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        if trainer_cfg.get("default_root_dir") is None:
            kwargs["default_root_dir"] = str(run_dir)
        if trainer_cfg.get("logger") in (None, True):
            kwargs["logger"] = _default_loggers(
                run_dir, config["run_name"], config["wandb_mode"], config["wandb_project"]
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

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        self._given_args = sys.argv[1:] if args is None else args
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path``, then take the model's settings from it, bar run-time ones.

        A missing, truncated or foreign file fails with its name before anything runs (read
        with ``weights_only=True``). LightningCLI then replaces the model settings by those
        stored in the checkpoint, so the weights always fit the networks. The settings in
        :data:`RUNTIME_MODEL_SETTINGS` (evaluation and run length) are put back where the
        config files or the command line state them; any other stated setting that differs
        from the checkpoint's is reported in a warning, never dropped in silence.
        """
        config = self.config[self.config.subcommand] if self.config.get("subcommand") else {}
        path = config.get("ckpt_path") if config else None
        if path is not None and str(path) not in ("last", "best", "hpc", "registry"):
            from advmim_lightning.export import read_checkpoint

            try:
                read_checkpoint(path)
            except (FileNotFoundError, ValueError) as err:
                raise SystemExit(f"advmim: error: --ckpt_path: {err}") from err
        subcommand = self.config.get("subcommand")
        if not subcommand or path is None:
            super()._parse_ckpt_path()
            return
        stated = self._stated_model_settings()
        before = self.config[subcommand]["model"].clone()
        super()._parse_ckpt_path()
        model = self.config[subcommand]["model"]
        ignored = []
        for key in sorted(stated):
            if key not in before or key not in model or _same_setting(key, before[key], model[key]):
                continue
            if key.split(".")[0] in RUNTIME_MODEL_SETTINGS:
                model[key] = before[key]
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


def _same_setting(key: str, stated: Any, stored: Any) -> bool:
    """Whether a stated model setting equals the checkpoint's value.

    Class paths compare as the classes they name, so ``advmim_lightning.networks.UNet`` (the
    re-export) equals ``advmim_lightning.networks.unet.UNet`` (where the class is defined, as
    checkpoints store it); other values compare as they are.
    """
    if stated == stored:
        return True
    if key.split(".")[-1] == "class_path" and isinstance(stated, str) and isinstance(stored, str):
        found, other = _loaded_class(stated), _loaded_class(stored)
        return found is not None and found is other
    return False


def _loaded_class(class_path: str) -> type | None:
    """The class a dotted path names, looked up in modules already imported (None otherwise).

    Nothing is imported here: a path from a checkpoint must not run code before the
    checkpoint's classes are checked, and the config's own classes are imported by then.
    """
    module_name, _, name = class_path.rpartition(".")
    module = sys.modules.get(module_name)
    found = getattr(module, name, None) if module is not None else None
    return found if isinstance(found, type) else None


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


def _default_loggers(run_dir: Path, run_name: str, wandb_mode: str, project: str) -> list:
    from advmim_lightning.loggers import RunCSVLogger

    loggers: list = [RunCSVLogger(save_dir=str(run_dir), name="", version="")]
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
                "predict (Lightning) and export, prepare (see `advmim export --help`)."
            )
        },
    )


def main(args: list[str] | None = None) -> None:
    """Run the ``advmim`` command line (the console script and ``python -m advmim_lightning``).

    Args:
        args: Command-line words (default: ``sys.argv[1:]``). Tests call ``main([...])``.
    """
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] in EXTRA_COMMANDS:
        import importlib

        status = importlib.import_module(EXTRA_COMMANDS[argv[0]]).main(argv[1:])
        if status:
            raise SystemExit(status)
        return
    try:
        build_cli(None if args is None else argv)
    except USER_ERRORS as err:
        user_error = _unwrap(err)
        if os.environ.get("ADVMIM_DEBUG", "0") not in ("", "0") or not _raised_here(user_error):
            raise
        raise SystemExit(
            f"advmim: error: {user_error}\n(set ADVMIM_DEBUG=1 to see the full traceback)"
        ) from err


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
