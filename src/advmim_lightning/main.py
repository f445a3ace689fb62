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

from jsonargparse import Namespace
from jsonargparse.typing import NonNegativeInt
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from advmim_lightning.callbacks import PredictionWriter, RunCheckpoint, ValidationPanels
from advmim_lightning.data import AdvMIMDataModule
from advmim_lightning.module import AdvMIMModule
from advmim_lightning.paths import ensure_writable_folder

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
#: The module's networks and the classes it builds when one is left at ``None``.
DEFAULT_NETWORKS = {
    "cnn": "advmim_lightning.networks.UNet",
    "transformer": "advmim_lightning.networks.SwinUNet",
}
_PARSER_WRAPPERS = ("Does not validate against any of the Union subtypes", "Problem with given")

log = logging.getLogger(__name__)

EXTRA_COMMANDS = {
    "export": "advmim_lightning.export",
    "prepare": "advmim_lightning.data.prepare",
    "compare": "advmim_lightning.compare",
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

    def before_instantiate_classes(self) -> None:
        """Networks left at ``None`` become the module's default class, built the same way."""
        self._spell_out_default_networks()

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
                continue
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


def _same_setting(key: str, stated: Any, stored: Any) -> bool:
    """Equal values, or (for a ``class_path``) two paths of one class
    (``advmim_lightning.networks.SwinUNet`` in a config, ``...networks.swin_unet.SwinUNet`` in a
    checkpoint)."""
    if stated == stored:
        return True
    if not (key.endswith("class_path") and isinstance(stated, str) and isinstance(stored, str)):
        return False
    import importlib

    def resolve(path: str) -> Any:
        module, _, name = path.rpartition(".")
        return getattr(importlib.import_module(module), name)

    try:
        return resolve(stated) is resolve(stored)
    except (ImportError, AttributeError, ValueError):
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


def _default_loggers(run_dir: Path, run_name: str, wandb_mode: str, project: str) -> list:
    from advmim_lightning.loggers import RunCSVLogger

    loggers: list = [RunCSVLogger(save_dir=str(run_dir), name="", version="")]
    if wandb_mode != "disabled":
        from lightning.pytorch.loggers import WandbLogger

        run_dir.mkdir(parents=True, exist_ok=True)
        loggers.append(
            WandbLogger(
                name=run_name,
                project=project,
                save_dir=str(run_dir),
                offline=wandb_mode == "offline",
            )
        )
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
