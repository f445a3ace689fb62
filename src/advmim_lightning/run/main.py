"""The ``advmim`` command line: :func:`main` (the console script and ``python -m``).

``advmim fit -c configs/quickstart.yaml`` trains; ``validate``, ``test`` and ``predict`` take the
same configs plus ``--ckpt_path``. These four are LightningCLI subcommands
(:class:`~advmim_lightning.run.cli.AdvMIMCLI`, built by :func:`build_cli`); ``advmim export``,
``prepare``, ``compare`` and ``demo`` are plain subcommands beside them (all are listed by
``advmim --help``; ``advmim --version`` prints the version). Errors that describe bad input
are printed as one line (:data:`USER_ERRORS`).

:mod:`advmim_lightning.run.cli` builds the LightningCLI (``build_cli``),
:mod:`advmim_lightning.run.resume` decides which checkpoint a command uses and whether it fits.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from advmim_lightning.run.cli import PLAIN_COMMANDS, build_cli
from advmim_lightning.run.folders import launching_process
from advmim_lightning.run.stops import RunStopped

__all__ = ["EXTRA_COMMANDS", "USER_ERRORS", "main"]


#: Errors that describe bad input (data, paths, arguments, a diverged run): the command line
#: prints their message and exits with status 1 instead of a traceback (``ADVMIM_DEBUG=1``
#: shows it) when the library raised them on purpose; from anywhere else (torch, NumPy, a
#: bug) the traceback is kept.
USER_ERRORS = (ValueError, OSError, FloatingPointError)
_PACKAGE_DIR = Path(__file__).resolve().parents[1]

_PARSER_WRAPPERS = ("Does not validate against any of the Union subtypes", "Problem with given")

#: Plain subcommands beside the LightningCLI ones, and the module whose ``main(argv)`` runs each
#: (listed in ``advmim --help`` from :data:`~advmim_lightning.run.cli.PLAIN_COMMANDS`).
EXTRA_COMMANDS = {name: module for name, (module, _) in PLAIN_COMMANDS.items()}


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
    except RunStopped as stopped:
        # exit status 143, as a shell reports SIGTERM: a partial run is not a finished one
        if launching_process():
            print(f"advmim: {stopped.report}", file=sys.stderr)
        raise
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
