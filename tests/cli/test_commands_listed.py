"""``advmim --version`` and ``advmim --help`` name the version and every subcommand."""

from __future__ import annotations

import pytest

import advmim_lightning
from advmim_lightning.run.cli import build_cli
from advmim_lightning.run.main import EXTRA_COMMANDS, main

ALL = ("fit", "validate", "test", "predict", "export", "prepare", "compare", "demo")


def test_version_prints_advmim_and_the_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code in (0, None)
    assert capsys.readouterr().out == f"advmim {advmim_lightning.__version__}\n"


def test_help_lists_every_subcommand_in_the_usage_line_and_the_text(capsys):
    assert set(EXTRA_COMMANDS) | {"fit", "validate", "test", "predict"} == set(ALL)
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    usage = " ".join(out.split("\n\n")[0].split())
    assert usage.startswith("usage: advmim "), usage
    assert "{" + ",".join(ALL) + "}" in usage, usage
    listed = out.split("Available subcommands:")[1]
    for name in ALL:
        assert f"\n    {name} " in listed, name
    assert "--version" in out


def test_a_plain_subcommand_given_to_build_cli_is_refused_naming_the_way():
    with pytest.raises(ValueError, match="advmim export is not a Lightning subcommand"):
        build_cli(["export"])
