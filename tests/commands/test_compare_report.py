"""``compare_report``: test means, rows, ``compare.csv``, ``summary.md``, the plot, the manifest."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from advmim_lightning.commands.compare_report import (
    COLUMNS,
    MANIFEST,
    check_report_files,
    read_test_means,
    record_report_files,
    rows_of_run,
    summary_markdown,
    summary_table,
    write_csv,
    write_plot,
)

METRICS = ("dice", "hd95", "asd", "nsd")


def metrics_file(path: Path, mean: dict[str, dict[str, float]]) -> Path:
    """A ``test_metrics.csv`` with one case row and the ``mean`` row ``mean``."""
    header = ["case_id"] + [f"{m}_{c}" for m in METRICS for c in mean[m]]
    values = [str(mean[m][c]) for m in METRICS for c in mean[m]]
    path.write_text(
        ",".join(header) + "\ncase000," + ",".join(values) + "\nmean," + ",".join(values) + "\n"
    )
    return path


def means(dice: float, lv: float = 0.8) -> dict[str, dict[str, float]]:
    return {
        "dice": {"LV": lv, "mean": dice},
        "hd95": {"LV": 2.0, "mean": 3.0},
        "asd": {"LV": 0.5, "mean": 0.75},
        "nsd": {"LV": 0.9, "mean": 0.6},
    }


def rows(*runs: tuple[str, int, int, float], network: str = "cnn") -> list[dict]:
    found = []
    for method, cases, seed, dice in runs:
        found += rows_of_run(method, cases, seed, means(dice), network)
    return found


def test_read_test_means(tmp_path):
    path = metrics_file(tmp_path / "t.csv", means(0.7))
    assert read_test_means(path) == means(0.7)
    assert read_test_means(tmp_path / "missing.csv") is None
    for text in (
        "",  # empty
        "name,dice_mean\nmean,1\n",  # not case_id first
        "case_id,dice_mean\ncase0,1\n",  # no mean row
        "case_id,dice_mean,hd95_mean,asd_mean,nsd_mean\nmean,1,2\n",  # incomplete mean row
        "case_id,dice_mean,hd95_mean,asd_mean,nsd_mean\nmean,1,2,x,4\n",  # not a number
        "case_id,dice_mean,hd95_mean,asd_mean,nsd_mean\nmean,1,2,3,4\nmean,1,2,3,4\n",  # twice
        "case_id,dice_mean,hd95_mean,asd_mean\nmean,1,2,3\n",  # a metric missing
        "case_id,dice_LV,hd95_mean,asd_mean,nsd_mean\nmean,1,2,3,4\n",  # dice without mean
        "case_id,volume_mean,dice_mean,hd95_mean,asd_mean,nsd_mean\nmean,9,1,2,3,4\n",  # unknown
        "case_id,dice,hd95_mean,asd_mean,nsd_mean\nmean,1,2,3,4\n",  # no class in the column
    ):
        (tmp_path / "bad.csv").write_text(text)
        assert read_test_means(tmp_path / "bad.csv") is None, text
    (tmp_path / "ok.csv").write_text(
        "case_id,dice_mean,hd95_mean,asd_mean,nsd_mean\ncase0,1,2,3,4\nmean,1,2,inf,nan\n"
    )
    got = read_test_means(tmp_path / "ok.csv")
    assert got["asd"] == {"mean": float("inf")} and got["nsd"]["mean"] != got["nsd"]["mean"]


def test_rows_of_run_are_one_value_each_classes_first():
    per_class = {m: {"mean": 0.5, "LV": 0.1, "RV": 0.2} for m in METRICS}
    got = rows_of_run("ctct", 3, 1, per_class, "transformer")
    assert len(got) == 4 * 3
    assert got[:3] == [
        {"method": "ctct", "network": "transformer", "labeled_cases": 3, "seed": 1,
         "class": name, "metric": "dice", "value": value}
        for name, value in (("LV", 0.1), ("RV", 0.2), ("mean", 0.5))
    ]  # fmt: skip
    assert [r["metric"] for r in got[::3]] == list(METRICS)


def test_write_csv(tmp_path):
    path = write_csv(rows(("advmim", 1, 0, 0.5)), tmp_path / "compare.csv")
    with path.open(newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0] == list(COLUMNS)
    assert COLUMNS == ("method", "network", "labeled_cases", "seed", "class", "metric", "value")
    assert table[1] == ["advmim", "cnn", "1", "0", "LV", "dice", "0.8"]
    assert table[2] == ["advmim", "cnn", "1", "0", "mean", "dice", "0.5"]
    assert len(table) == 1 + 8
    assert write_csv([], tmp_path / "empty.csv").read_text().splitlines() == [",".join(COLUMNS)]


def test_summary_table_values():
    table = summary_table(
        rows(
            ("supervised", 1, 0, 0.5),
            ("supervised", 1, 1, 0.7),
            ("advmim", 1, 0, 0.8),
            ("advmim", 1, 1, 0.9),
            ("advmim", 3, 0, 0.95),
        ),
        ["supervised", "advmim"],
        [1, 3],
    )
    assert table.splitlines() == [
        "| Method | Labeled cases | Seeds | CNN Dice (%) | CNN HD95 | CNN ASD | CNN NSD (%) | "
        "CNN Dice gain over supervised |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        "| supervised | 1 | 2 | 60.0 ± 14.1 | 3.00 ± 0.00 | 0.75 ± 0.00 | 60.0 ± 0.0 | — |",
        "| advmim | 1 | 2 | 85.0 ± 7.1 | 3.00 ± 0.00 | 0.75 ± 0.00 | 60.0 ± 0.0 | +25.0 |",
        "| advmim | 3 | 1 | 95.0 | 3.00 | 0.75 | 60.0 | — |",  # one seed: no std, no baseline
    ]
    # Without the supervised baseline there is no gain column.
    plain = summary_table(rows(("ctct", 1, 0, 0.5)), ["ctct"], [1])
    assert (
        plain.splitlines()[0]
        == "| Method | Labeled cases | Seeds | CNN Dice (%) | CNN HD95 | CNN ASD | CNN NSD (%) |"
    )
    assert plain.splitlines()[2] == "| ctct | 1 | 1 | 50.0 | 3.00 | 0.75 | 60.0 |"
    assert summary_table([], ["advmim"], [1]) == (
        "No combination has finished: there is nothing to summarise."
    )


def test_summary_table_has_one_column_set_per_network():
    found = rows(("supervised", 1, 0, 0.5), ("advmim", 1, 0, 0.8)) + rows(
        ("supervised", 1, 0, 0.2), ("advmim", 1, 0, 0.6), network="transformer"
    )
    table = summary_table(found, ["supervised", "advmim"], [1], ["cnn", "transformer"])
    header = table.splitlines()[0]
    assert header.startswith("| Method | Labeled cases | Seeds | CNN Dice (%) |")
    assert "| CNN Dice gain over supervised | Transformer Dice (%) | Transformer HD95 |" in header
    assert header.endswith("| Transformer Dice gain over supervised |")
    assert table.splitlines()[3] == (
        "| advmim | 1 | 1 | 80.0 | 3.00 | 0.75 | 60.0 | +30.0 | 60.0 | 3.00 | 0.75 | 60.0 | +40.0 |"
    )
    # the networks default to those of the rows, in order
    assert summary_table(found, ["supervised", "advmim"], [1]) == table
    text = summary_markdown(found, ["supervised", "advmim"], [1], [0], {})
    assert "| advmim | transformer | 1 | 80.0 |" in text and "(cnn, transformer)" in text


def test_summary_markdown_sections():
    found = rows(("supervised", 1, 0, 0.5), ("advmim", 1, 0, 0.75))
    text = summary_markdown(
        found,
        ["supervised", "advmim"],
        [1],
        [0, 1],
        {"advmim-l1-s1": "ValueError: broken"},
        ["command: `advmim compare ...`", "tested checkpoint: `last.ckpt`"],
    )
    assert text.startswith("# advmim compare\n\nTest-set scores, mean ± standard deviation over ")
    assert "(of seeds 0, 1)" in text
    assert "| advmim | 1 | 1 | 75.0 | 3.00 | 0.75 | 60.0 | +25.0 |" in text
    assert (
        "## Dice per class (%)\n\n| Method | Network | Labeled cases | LV |\n"
        "| --- | --- | ---: | ---: |\n" in text
    )
    assert "| supervised | cnn | 1 | 80.0 |\n| advmim | cnn | 1 | 80.0 |" in text
    assert (
        "## How it was run\n\n- command: `advmim compare ...`\n- tested checkpoint: `last.ckpt`"
        in text
    )
    assert text.endswith("## Failed combinations\n\n- `advmim-l1-s1`: ValueError: broken\n")
    empty = summary_markdown([], ["advmim"], [1], [0], {})
    assert "nothing to summarise" in empty
    assert "Dice per class" not in empty and "How it was run" not in empty
    assert "Failed" not in empty


def test_write_plot_is_a_png(tmp_path):
    from PIL import Image

    path = write_plot(
        rows(("supervised", 1, 0, 0.5), ("advmim", 1, 0, 0.8), ("advmim", 3, 1, 0.9))
        + rows(("advmim", 1, 0, 0.6), network="transformer"),
        ["supervised", "advmim", "ctct"],  # ctct without values: no line, no error
        [1, 3],
        tmp_path / "compare.png",
        ["cnn", "transformer"],  # a line style each
    )
    assert path == tmp_path / "compare.png"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (720, 504)


def test_report_files_manifest(tmp_path):
    check_report_files(tmp_path)  # nothing there yet
    mine = tmp_path / "summary.md"
    mine.write_text("my notes\n")
    with pytest.raises(ValueError) as err:
        check_report_files(tmp_path)
    assert str(err.value) == (
        f"{mine} exists and was not written by advmim compare (no record of it in "
        f"{tmp_path / MANIFEST}); it is not replaced: move it away or choose another --output"
    )
    csv_path = write_csv([], tmp_path / "compare.csv")
    plot = tmp_path / "compare.png"
    plot.write_bytes(b"png")
    assert record_report_files(tmp_path, [csv_path, mine, plot]) == tmp_path / MANIFEST
    check_report_files(tmp_path)
    record = json.loads((tmp_path / MANIFEST).read_text())
    assert record["format"] == "advmim-compare-manifest"
    assert sorted(record["files"]) == ["compare.csv", "compare.png", "summary.md"]
    assert all(len(digest) == 64 for digest in record["files"].values())
    mine.write_text("edited\n")
    with pytest.raises(ValueError) as err:
        check_report_files(tmp_path)
    assert str(err.value).startswith(f"{mine} was changed since advmim compare wrote it")
    # A new report without a plot removes the plot compare wrote before.
    record_report_files(tmp_path, [csv_path, mine])
    assert not plot.exists() and mine.exists()
    check_report_files(tmp_path)
    # A plot of someone else's is not listed, so it is not removed either.
    plot.write_bytes(b"theirs")
    record_report_files(tmp_path, [csv_path, mine])
    assert plot.read_bytes() == b"theirs"
    with pytest.raises(ValueError, match=r"compare\.png exists and was not written"):
        check_report_files(tmp_path)
    (tmp_path / MANIFEST).write_text("not json")
    with pytest.raises(ValueError, match=r"compare\.csv exists and was not written"):
        check_report_files(tmp_path)
