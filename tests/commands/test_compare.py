"""``advmim compare`` end to end on the tiny phantom: tables, plot, skip, resume, failures."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from advmim_lightning.run.main import main

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "tests/cli/tiny.yaml")
#: Every combination: 4 iterations, validated at 2 and 4 (so a best checkpoint exists).
SETTINGS = [
    "--model.max_iterations",
    "4",
    "--trainer.val_check_interval",
    "2",
    "--wandb_mode",
    "disabled",
]


def compare(output: Path, *words: str) -> int:
    """``advmim compare`` of supervised and AdvMIM, 1 labeled case, seeds 0 and 1."""
    try:
        main(
            [
                "compare",
                "-c",
                str(ROOT / "configs/quickstart.yaml"),
                "-c",
                TINY,
                *words,
                "--methods",
                "supervised",
                "advmim",
                "--labeled_cases",
                "1",
                "--seeds",
                "0",
                "1",
                "--output",
                str(output),
                *SETTINGS,
            ]
        )
    except SystemExit as stop:
        return stop.code
    return 0


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def hparams(run: Path) -> dict:
    return torch.load(run / "checkpoints/last.ckpt", weights_only=True)["hyper_parameters"]


@pytest.fixture
def subprocess_env(monkeypatch):
    """One thread and no wandb in the combinations' subprocesses (they inherit os.environ)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("WANDB_MODE", "disabled")


def test_compare_tables_plot_skip_resume_and_a_failing_combination(
    tmp_path, capsys, subprocess_env
):
    output = tmp_path / "compare"
    # A combination killed after 2 of its 4 iterations: last.ckpt, no test result.
    killed = output / "supervised-l1-s0"
    main(
        [
            "fit",
            "-c",
            str(ROOT / "configs/quickstart.yaml"),
            "-c",
            TINY,
            *SETTINGS,
            "--model.method",
            "supervised",
            "--data.labeled_cases",
            "1",
            "--runs_dir",
            str(output),
            "--run_name",
            killed.name,
            "--trainer.max_steps",
            "4",  # 2 optimiser steps per supervised iteration
        ]
    )
    assert (
        torch.load(killed / "checkpoints/last.ckpt", weights_only=True)["state_dict"]["iteration"]
        == 2
    )
    assert not (killed / "test_metrics_cnn.csv").exists()
    # A combination that fails: its last.ckpt is not a checkpoint.
    broken = output / "advmim-l1-s1" / "checkpoints" / "last.ckpt"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a checkpoint")
    # A per-method setting in a config file (written for one method), and a setting on the
    # command line that only AdvMIM takes (the supervised module refuses it when given).
    per_method = tmp_path / "per_method.yaml"
    per_method.write_text("model:\n  lr: 0.03\n")
    capsys.readouterr()

    status = compare(output, "-c", str(per_method), "--model.adversarial_weight", "0.002")

    out = capsys.readouterr().out
    assert status == 1
    assert "model.lr=0.03 from the config is a per-method setting" in out
    assert "model.adversarial_weight=0.002 is used by advmim only; supervised ignores it" in out
    assert "model.mask_block_size=16 is used by advmim only; supervised ignores it" in out
    for k in range(1, 5):
        assert f"[{k}/4] " in out
    assert "[1/4] supervised-l1-s0: fit + test (resuming from checkpoints/last.ckpt)" in out
    assert "elapsed" in out and "left" in out
    failed_line = next(line for line in out.splitlines() if "advmim-l1-s1: FAILED" in line)
    assert "not a readable checkpoint" in failed_line and str(broken) in failed_line
    assert "1 of 4 combination(s) failed" in out
    # the summary table printed, one column set per network
    assert "| Method | Labeled cases | Seeds | CNN Dice (%)" in out
    assert "| Transformer Dice (%) | Transformer HD95 |" in out

    # The killed run went on from iteration 2: each iteration was trained (logged) once.
    with (killed / "metrics.csv").open(newline="") as handle:
        iterations = [r["train/iteration"] for r in csv.DictReader(handle)]
    assert [float(i) for i in iterations if i] == [1.0, 2.0, 3.0, 4.0]
    assert (
        f"Restoring states from the checkpoint path at {killed}/checkpoints/last.ckpt"
        in (killed / "compare.log").read_text()
    )
    # Method settings: each method's own lr; the command-line AdvMIM weight reached AdvMIM.
    assert hparams(killed)["lr"] == pytest.approx(0.01)
    advmim = hparams(output / "advmim-l1-s0")
    assert advmim["lr"] == pytest.approx(0.05)
    assert advmim["adversarial_weight"] == pytest.approx(0.002)
    assert advmim["rng_seed"] == 0 and hparams(output / "supervised-l1-s1")["rng_seed"] == 1
    assert "adversarial_weight" not in hparams(killed)

    rows = read_rows(output / "compare.csv")
    assert list(rows[0]) == [
        "method",
        "network",
        "labeled_cases",
        "seed",
        "class",
        "metric",
        "value",
    ]
    assert len(rows) == 3 * 2 * 4 * 4  # 3 finished runs x 2 networks x 4 metrics x 4 classes
    assert {r["network"] for r in rows} == {"cnn", "transformer"}
    assert {(r["method"], r["seed"]) for r in rows} == {
        ("supervised", "0"),
        ("supervised", "1"),
        ("advmim", "0"),
    }
    assert {r["class"] for r in rows} == {"RV", "Myo", "LV", "mean"}
    assert {r["metric"] for r in rows} == {"dice", "hd95", "asd", "nsd"}
    assert all(math.isfinite(float(r["value"])) for r in rows)
    for network in ("cnn", "transformer"):
        test_mean = read_rows(killed / f"test_metrics_{network}.csv")[-1]
        dice = next(
            r
            for r in rows
            if (r["method"], r["network"], r["seed"], r["class"], r["metric"])
            == ("supervised", network, "0", "mean", "dice")
        )
        assert float(dice["value"]) == pytest.approx(float(test_mean["dice_mean"]))

    summary = (output / "summary.md").read_text()
    assert "| supervised | 1 | 2 |" in summary and "| advmim | 1 | 1 |" in summary
    assert "Dice gain over supervised" in summary and "## Dice per class (%)" in summary
    assert "## Failed combinations" in summary and "`advmim-l1-s1`" in summary
    png = (output / "compare.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    from PIL import Image

    with Image.open(output / "compare.png") as image:
        assert image.format == "PNG" and image.width > 300 and image.height > 200

    # Second call, the broken checkpoint removed: only that combination runs.
    broken.unlink()
    finished = [output / n for n in ("supervised-l1-s0", "supervised-l1-s1", "advmim-l1-s0")]
    stamps = {
        p: p.stat().st_mtime_ns
        for run in finished
        for p in (run / "test_metrics_transformer.csv", run / "checkpoints/last.ckpt")
    }

    status = compare(output, "-c", str(per_method), "--model.adversarial_weight", "0.002")

    out = capsys.readouterr().out
    assert status == 0
    assert out.count("finished earlier, skipped") == 3
    assert "[4/4] advmim-l1-s1: done in" in out
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing retrained or retested
    rows = read_rows(output / "compare.csv")
    assert len(rows) == 4 * 2 * 4 * 4
    summary = (output / "summary.md").read_text()
    assert "| advmim | 1 | 2 |" in summary and "Failed" not in summary

    # The Python API over the finished folder: the same rows, nothing run again.
    from advmim_lightning.commands.compare import run_comparison

    api_rows = run_comparison(
        [str(ROOT / "configs/quickstart.yaml"), TINY, str(per_method)],
        methods=["supervised", "advmim"],
        labeled_cases=[1],
        seeds=[0, 1],
        output=output,
        overrides=[*SETTINGS, "--model.adversarial_weight", "0.002"],
    )
    assert api_rows.failed == {} and len(api_rows) == len(rows)
    assert [str(r["value"]) for r in api_rows] == [r["value"] for r in rows]
    assert capsys.readouterr().out.count("finished earlier, skipped") == 4


def test_compare_refuses_what_it_sets_itself_and_a_split_file_fixing_the_labeled_cases(
    tmp_path, capsys
):
    output = str(tmp_path / "out")
    for words, expected in (
        (["--data.labeled_cases", "3"], "--data.labeled_cases is set by compare"),
        (
            ["--model.method=ctct"],
            "--model.method is set by compare for every combination; use --methods",
        ),
        (["--run_name", "x"], "--run_name is set by compare"),
        (["--methods", "advmim", "advmim"], "methods lists a value twice"),
        (["--labeled_cases", "0"], "labeled_cases must be >= 1, got [0]"),
        (
            ["--model.eval_network", "cnn"],
            "--model.eval_network is set by compare for every combination; use --networks",
        ),
        (
            ["--networks", "cnn", "cnn"],
            "networks must be distinct values among ['cnn', 'transformer', 'ensemble'], got "
            "['cnn', 'cnn']",
        ),
    ):
        with pytest.raises(SystemExit) as stop:
            main(["compare", "-c", TINY, "--output", output, *words])
        assert stop.value.code == 2
        assert expected in capsys.readouterr().err

    split = tmp_path / "split.json"
    split.write_text('{"labeled": ["case000"], "test": ["case001"]}')
    with pytest.raises(SystemExit):
        main(["compare", "-c", TINY, "--output", output, "--data.settings.split_file", str(split)])
    err = capsys.readouterr().err
    assert f"data.settings.split_file {split} lists the labeled cases" in err
    with pytest.raises(SystemExit):
        main(["compare", "-c", str(tmp_path / "missing.yaml"), "--output", output])
    assert f"config file {tmp_path / 'missing.yaml'} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing ran


def test_compare_runs_the_domain_gap_study_and_reports_every_network(
    tmp_path, capsys, subprocess_env
):
    """Labeled source phantom, unlabeled target phantom, tested on the target: one command,
    with a column set per network (the ensemble too)."""
    output = tmp_path / "domain"
    status = compare(
        output,
        "--data.unlabeled_layout",
        "phantom",
        "--data.eval_source",
        "second",
        "--networks",
        "cnn",
        "transformer",
        "ensemble",
        "--seeds",
        "0",
    )
    out = capsys.readouterr().out
    assert status == 0, out
    assert "test Dice cnn " in out and ", transformer " in out and ", ensemble " in out
    run = output / "advmim-l1-s0"
    log = (run / "compare.log").read_text()
    assert "--data.unlabeled_layout phantom --data.eval_source second" in log
    hparams = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    data = hparams["datamodule_hyper_parameters"]
    assert data["unlabeled_layout"] == "phantom" and data["eval_source"] == "second"
    # tested on the target phantom (seed 1, target domain): its own test cases
    from advmim_lightning.data import AdvMIMDataModule, PhantomSettings

    target = AdvMIMDataModule(
        phantom=PhantomSettings(cases=6, slices=3, size=64, seed=1, domain="target"),
        labeled_cases=1,
    ).resolve_split()
    for network in ("cnn", "transformer", "ensemble"):
        cases = [r["case_id"] for r in read_rows(run / f"test_metrics_{network}.csv")]
        assert cases == [*target.test, "mean"]
    rows = read_rows(output / "compare.csv")
    assert {r["network"] for r in rows} == {"cnn", "transformer", "ensemble"}
    header = (output / "summary.md").read_text().split("\n| --- |")[0].splitlines()[-1]
    for name in ("CNN", "Transformer", "Ensemble"):
        for column in ("Dice (%)", "HD95", "ASD", "NSD (%)", "Dice gain over supervised"):
            assert f"| {name} {column} |" in header, header
    cnn = {r["method"]: r["value"] for r in rows if r["network"] == "cnn" and r["class"] == "mean"}
    assert cnn.keys() == {"supervised", "advmim"}


# ---------------------------------------------------------------- reruns, report files, stopping
CONFIGS = [str(ROOT / "configs/quickstart.yaml"), TINY]


def compare_one(output: Path, *words: str) -> int:
    """``advmim compare`` of the supervised baseline, 1 labeled case, seed 0 unless given."""
    seeds = [] if "--seeds" in words else ["--seeds", "0"]
    try:
        main(
            [
                "compare",
                *(w for c in CONFIGS for w in ("-c", c)),
                "--methods",
                "supervised",
                "--labeled_cases",
                "1",
                *seeds,
                "--output",
                str(output),
                "--wandb_mode",
                "disabled",
                *words,
            ]
        )
    except SystemExit as stop:
        return stop.code
    return 0


def fake_finished(run: Path, dice: float = 0.5) -> Path:
    """Complete test tables of both networks in ``run``: the combination counts as finished
    (the transformer's Dice is ``dice / 2``)."""
    run.mkdir(parents=True, exist_ok=True)
    metrics = ("dice", "hd95", "asd", "nsd")
    header = ["case_id"] + [f"{m}_{c}" for m in metrics for c in ("LV", "mean")]
    for network, value in (("cnn", dice), ("transformer", dice / 2)):
        values = ",".join(str(v) for v in (value, value, 1.5, 1.5, 0.5, 0.5, value, value))
        path = run / f"test_metrics_{network}.csv"
        path.write_text(",".join(header) + f"\ncase000,{values}\nmean,{values}\n")
    return path


def record_settings(output: Path, name: str, *overrides: str, checkpoint: str = "best") -> Path:
    """The settings record compare writes for the combination ``name`` given ``overrides``."""
    from advmim_lightning.commands.compare_jobs import write_settings
    from advmim_lightning.commands.compare_plan import (
        Combination,
        combination_settings,
        stated_settings,
    )

    method, cases, seed = name.split("-")
    combo = Combination(method, int(cases[1:]), int(seed[1:]))
    stated, from_files = stated_settings(CONFIGS, ["--wandb_mode", "disabled", *overrides])
    settings = combination_settings(combo, stated, from_files, checkpoint)
    return write_settings(output / name, settings, "advmim compare ...")


def test_compare_refuses_a_rerun_with_other_settings_unless_retrain(
    tmp_path, capsys, subprocess_env
):
    output = tmp_path / "compare"
    fake_finished(output / "supervised-l1-s0", dice=0.25)
    record = record_settings(output, "supervised-l1-s0", "--model.max_iterations", "4")
    assert compare_one(output, "--model.max_iterations", "4") == 0  # same settings: pooled
    summary = (output / "summary.md").read_text()
    assert "| supervised | 1 | 1 | 25.0 |" in summary
    capsys.readouterr()

    for seeds in (["--seeds", "0"], ["--seeds", "0", "1"]):
        status = compare_one(output, *seeds, "--model.max_iterations", "6", "--model.lr", "0.1")
        err = capsys.readouterr().err
        assert status == 2
        assert (
            f"the combination supervised-l1-s0 was trained with other settings than this "
            f"command gives ({record}): model.lr (not set) there, 0.1 here; "
            "model.max_iterations 4 there, 6 here; its results would be pooled with runs of "
            "other settings" in err
        ), err
        assert "--retrain" in err
        assert (output / "summary.md").read_text() == summary
        assert not (output / "supervised-l1-s1").exists()  # nothing ran
    # Another --checkpoint is another setting too.
    assert compare_one(output, "--model.max_iterations", "4", "--checkpoint", "last") == 2
    assert "--checkpoint best there, last here" in capsys.readouterr().err

    # --retrain: the combination is trained again with the new settings (2 iterations).
    new = ["--model.max_iterations", "2", "--trainer.val_check_interval", "2", "--retrain"]
    status = compare_one(output, *new)
    out = capsys.readouterr().out
    assert status == 0, out
    assert "note: supervised-l1-s0 was trained with other settings; training it again" in out
    assert "[1/1] supervised-l1-s0: done in" in out
    recorded = json.loads(record.read_text())["settings"]
    assert recorded["model.max_iterations"] == 2 and recorded["--checkpoint"] == "best"
    assert recorded["trainer.val_check_interval"] == 2
    summary = (output / "summary.md").read_text()
    assert "--model.max_iterations 2" in summary and "| supervised | 1 | 1 | 25.0 |" not in summary
    # The same command again (without --retrain): nothing differs, nothing runs.
    assert compare_one(output, *new[:-1]) == 0
    assert "finished earlier, skipped" in capsys.readouterr().out


def test_compare_does_not_replace_report_files_it_did_not_write(tmp_path, capsys):
    output = tmp_path / "compare"
    fake_finished(output / "supervised-l1-s0")
    for name in ("summary.md", "compare.csv", "compare.png"):
        mine = output / name
        mine.write_text("my own notes\n")
        assert compare_one(output) == 2
        err = capsys.readouterr().err
        assert (
            f"{mine} exists and was not written by advmim compare (no record of it in "
            f"{output / 'compare_manifest.json'}); it is not replaced" in err
        ), err
        assert mine.read_text() == "my own notes\n"
        mine.unlink()
    capsys.readouterr()
    assert compare_one(output) == 0
    out = capsys.readouterr().out
    assert "finished without a record of their settings" in out  # a run made by hand
    manifest = json.loads((output / "compare_manifest.json").read_text())
    assert sorted(manifest["files"]) == ["compare.csv", "compare.png", "summary.md"]
    assert compare_one(output) == 0  # its own files are replaced
    # A file of the report edited since compare wrote it is kept.
    with (output / "compare.csv").open("a") as handle:
        handle.write("edited\n")
    assert compare_one(output) == 2
    err = capsys.readouterr().err
    assert f"{output / 'compare.csv'} was changed since advmim compare wrote it" in err
    assert (output / "compare.csv").read_text().endswith("edited\n")


def test_compare_removes_the_stale_error_file_of_a_finished_combination(tmp_path, capsys):
    output = tmp_path / "compare"
    run = output / "supervised-l1-s0"
    fake_finished(run)
    (run / "compare_error.txt").write_text("ValueError: an old failure\n")

    assert compare_one(output) == 0

    assert not (run / "compare_error.txt").exists()
    assert "Failed" not in (output / "summary.md").read_text()
    assert "failed" not in capsys.readouterr().out


def _combination_children(pid: int) -> list[int]:
    """The processes of ``pid`` that run a combination (not other short-lived helpers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(fields[1]) == pid and b"compare_jobs import run_job" in command:
                found.append(int(entry.name))
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_a_combination_ends_with_the_comparison(tmp_path, how):
    """The comparison killed (-9) or terminated: its child training ends too, no orphan."""
    output = tmp_path / "compare"
    script = "import sys; from advmim_lightning.run.main import main; main(sys.argv[1:])"
    words = ["compare", *(w for c in CONFIGS for w in ("-c", c)), "--methods", "supervised"]
    words += ["--labeled_cases", "1", "--seeds", "0", "--output", str(output)]
    words += ["--model.max_iterations", "100000", "--wandb_mode", "disabled"]
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    import advmim_lightning

    package_root = str(Path(advmim_lightning.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([package_root, env.get("PYTHONPATH", "")])
    parent = subprocess.Popen(
        [sys.executable, "-c", script, *words],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    children: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not children and time.monotonic() < deadline and parent.poll() is None:
            time.sleep(0.2)
            children = _combination_children(parent.pid)
        assert children, "the comparison started no combination"
        time.sleep(1.0)  # the child is running (importing or training)
        os.kill(parent.pid, how)
        code = parent.wait(timeout=60)
        assert code == (-signal.SIGKILL if how == signal.SIGKILL else 143)
        deadline = time.monotonic() + 60
        while any(_running(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_running(c) for c in children), "the combination outlived the comparison"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for child in children:  # an orphan of a failed test is not left running
            if _running(child):
                os.kill(child, signal.SIGKILL)


def test_compare_refuses_a_settings_record_it_cannot_read(tmp_path, capsys):
    output = tmp_path / "compare"
    run = output / "supervised-l1-s0"
    fake_finished(run)
    for text, expected in (
        ("{not json", "is not a readable settings record of advmim compare"),
        ('{"settings": {}}', "is not a settings record of advmim compare (no format"),
    ):
        (run / "compare_settings.json").write_text(text)
        assert compare_one(output) == 2
        err = capsys.readouterr().err
        assert f"{run / 'compare_settings.json'} {expected}" in err, err
        assert "remove the file to accept the run as it is" in err
    assert not (output / "summary.md").exists()
