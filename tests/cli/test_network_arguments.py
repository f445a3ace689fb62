"""A network's init argument of the wrong type is one line naming the setting, the value and
the type expected, not a traceback about a linked key (docs/refusals.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiny import cli_error

ROOT = Path(__file__).resolve().parents[2]
TINY = str(Path(__file__).with_name("tiny.yaml"))
QUICKSTART = ["-c", str(ROOT / "configs/quickstart.yaml"), "-c", TINY]


def refused(tmp_path: Path, *words: str) -> str:
    common = ["--runs_dir", str(tmp_path), "--wandb_mode", "disabled"]
    return cli_error("fit", *QUICKSTART, *common, *words)


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (
            ["--model.cnn.init_args.dropout", "0.9"],
            "model.cnn.init_args.dropout 0.9: expected Sequence[float] (the dropout argument "
            "of advmim_lightning.networks.UNet), got 0.9",
        ),
        (
            ["--model.transformer.init_args.window_size", "x"],
            "model.transformer.init_args.window_size x: expected int (the window_size argument "
            "of advmim_lightning.networks.SwinUNet), got 'x'",
        ),
        (
            ["--model.cnn.init_args.dropuot", "[0.1]"],
            "model.cnn.init_args.dropuot: advmim_lightning.networks.UNet has no argument "
            "'dropuot' (its arguments: in_channels, num_classes, channels, dropout,",
        ),
    ],
    ids=["list-expected", "int-expected", "unknown"],
)
def test_a_wrong_network_argument_on_the_command_line_is_one_line(tmp_path, words, expected):
    message = refused(tmp_path, *words)
    assert expected in message, message
    assert "Expected key" not in message and not (tmp_path / "advmim").exists()


def test_a_wrong_network_argument_in_a_config_file_is_one_line(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  cnn:\n    init_args:\n      dropout: 0.9\n")
    message = refused(tmp_path, "-c", str(config))
    assert "model.cnn.init_args.dropout 0.9: expected Sequence[float]" in message, message
