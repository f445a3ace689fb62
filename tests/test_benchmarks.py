"""Smoke tests of the benchmark scripts: they run and print their tables (no timing asserts)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_step_benchmark_times_real_iterations_on_cpu(capsys, tmp_path):
    rows = load("train_step").main(
        [
            "--small",
            "--device",
            "cpu",
            "--iterations",
            "2",
            "--warmup",
            "1",
            "--precision",
            "32-true",
            "--batch",
            "2",
            "--option",
            "baseline",
            "--option",
            "published_order",
            "--option",
            "cuda_graph",
            "--json",
            str(tmp_path / "rows.jsonl"),
        ]
    )
    assert [r["option"] for r in rows] == ["baseline", "published_order", "cuda_graph"]
    assert all(r["batch"] == "2+2" and r["ms"] > 0 and r["median_gpu_ms"] > 0 for r in rows)
    out = capsys.readouterr().out
    assert "ms/iter" in out and "images/s" in out and "vs public" in out
    assert out.count("published_order") == 1
    assert "cuda_graph rows on a CPU run the step function uncaptured" in out
    stored = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert [r["option"] for r in stored] == ["baseline", "published_order", "cuda_graph"]
    assert stored[0]["networks"] == "small" and stored[0]["precision"] == "32-true"
    # the CPU refusal of cuda_graph is back in place after the rehearsal row
    from advmim_lightning.method import contracts

    assert contracts.check_cuda_graph_trainer.__name__ == "check_cuda_graph_trainer"


def test_gpu_report_checks_each_target_and_lists_what_was_not_measured(tmp_path):
    def row(option, precision, batch, ms, peak=3.0, **extra):
        return {
            "option": option, "precision": precision, "batch": batch, "ms": ms,
            "median_gpu_ms": ms * 0.9, "images_s": 2 * int(batch.split("+")[0]) / ms * 1000,
            "peak_gib": peak, "machine": "NVIDIA H100 80GB HBM3", "torch": "2.11.0",
            "lightning": "2.6.6", "date": "2026-11-27", "networks": "default", **extra,
        }  # fmt: skip

    profile = {
        "kernels_per_iteration": 4000,
        "gpu_busy_fraction": 0.93,
        "profiled_ms_per_iteration": 21.5,
        "top_kernels_ms_per_iteration": [["sm90_gemm", 3.25]],
    }
    rows = [
        row("eager", "bf16-mixed", "8+8", 130.0, peak=6.0),
        row("baseline", "bf16-mixed", "8+8", 20.0, peak=4.5),
        row("baseline", "bf16-mixed", "32+32", 70.0),
        row("eager", "32-true", "8+8", 95.0),
        row("baseline", "bf16-mixed", "8+8", 21.0, profile=profile),
        {"skipped": "compile", "why": "stopped at its 90 s limit"},
    ]
    rows_path = tmp_path / "rows.jsonl"
    rows_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    log = "[cuda_graph vs eager, 20 iterations] relative update difference: graphed 1e-3\n"
    log += "training DataLoader, default 2 workers (images/s in all): 1500\n2 passed in 9s\n"
    report = load("gpu_report").report(*load("gpu_report").load(rows_path), log)
    assert "| baseline | bf16-mixed | 8+8 | 20.0 | 18.0 | 800 | 4.50 | 16.4x |" in report
    assert (
        "- baseline, bf16-mixed: 20.0 ms (baseline), target <= 25 ms: met; <= 15 ms: missed"
        in report
    )
    assert "- eager, bf16-mixed: 130.0 ms (eager), target <= 120 ms: missed" in report
    assert "- fastest, 32-true: 95.0 ms (eager), target <= 45 ms: missed" in report
    assert "peak memory, bf16, baseline: 4.50 GiB, target <= 5: met" in report
    assert "32 + 32 time / 8 + 8 time, bf16, baseline: 3.50, target <= 4.5: met" in report
    assert "gives 1500 images/s, the GPU consumes 800 (baseline): 1.9x" in report
    assert "| baseline | 4000 | 93% | 21.5 | sm90_gemm 3.25 |" in report
    assert "- [cuda_graph vs eager, 20 iterations]" in report and "- 2 passed in 9s" in report
    assert "- compile: stopped at its 90 s limit" in report


@pytest.mark.slow
def test_the_gpu_run_script_rehearses_on_the_cpu(tmp_path):
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_run.sh"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=ROOT,
        env={**os.environ, "REHEARSAL": "1", "BUDGET": "160", "PYTHON": sys.executable},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = (tmp_path / "gpu_report.md").read_text()
    assert (
        "| baseline | bf16-mixed | 2+2 |" in report and "| fast_graph | 32-true | 2+2 |" in report
    )
    assert "4 passed" in report  # the GPU tests' CPU rehearsal
    assert "skipped" in (tmp_path / "rows.jsonl").read_text()  # the budget ran out: recorded


def test_data_pipeline_benchmark_runs_quick():
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "data_pipeline.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert "images/s" in done.stdout


def test_the_training_benchmark_needs_neither_monai_nor_wandb_nor_jsonargparse():
    # GPU images ship torch, lightning, timm, torchmetrics and einops only: block the others.
    script = (
        "import sys\n"
        "for name in ('monai', 'wandb', 'jsonargparse', 'nibabel', 'h5py'):\n"
        "    sys.modules[name] = None\n"
        f"sys.argv = ['train_step.py', '--small', '--device', 'cpu', '--iterations', '1',\n"
        "            '--warmup', '1', '--precision', '32-true', '--batch', '2']\n"
        f"import runpy; runpy.run_path({str(ROOT / 'benchmarks' / 'train_step.py')!r}, "
        "run_name='__main__')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ms/iter" in done.stdout


def rehearse(script: str, output: Path, **env: str) -> subprocess.CompletedProcess:
    """Runs a comparison script's SMOKE rehearsal into ``output``; checks it succeeded."""
    import os

    env = {**os.environ, "SMOKE": "1", "OUTPUT": str(output), "PYTHON": sys.executable, **env}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / script)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_the_phantom_comparison_script_rehearses_end_to_end(tmp_path):
    output = tmp_path / "compare"
    done = rehearse("compare_phantom.sh", output)
    for method in ("supervised", "ctct", "advmim"):
        assert f"| {method} | 1 | 1 |" in done.stdout
    assert (output / "compare.png").is_file() and (output / "summary.md").is_file()


@pytest.mark.slow
def test_the_domain_gap_study_script_rehearses_with_the_milder_target(tmp_path):
    output = tmp_path / "gap"
    done = rehearse("compare_domain_gap.sh", output, STUDY="adversarial_weight")
    assert "| advmim | 1 | 1 |" in done.stdout and "Transformer Dice (%)" in done.stdout
    config = (output / "advmim-l1-s0" / "config.yaml").read_text()
    assert "adversarial_weight: 0.1" in config and "domain_strength: 0.35" in config
    assert "eval_source: second" in config


@pytest.mark.slow
def test_memory_scaling_benchmark_prints_its_table(capsys):
    rows = load("memory_scaling").main(["--quick"])
    assert [r["data"] for r in rows] == ["in RAM", "cache (cold)", "cache (warm)"]
    assert all(r["main RSS"] > r["main anon"] > 0 and r["total PSS"] > 0 for r in rows)
    assert "| cases | data | main RSS | main anon | total PSS |" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_reproducibility_benchmark_fits_and_tests_per_thread_count(tmp_path, capsys):
    short = tmp_path / "short.yaml"
    short.write_text("trainer:\n  val_check_interval: 2\n")
    configs = [ROOT / "configs" / "quickstart.yaml", ROOT / "tests" / "cli" / "tiny.yaml", short]
    words = [w for c in configs for w in ("--config", str(c))]
    rows = load("demo_reproducibility").main([*words, "--iterations", "2", "--threads", "1", "2"])
    assert [(r["threads"], r["seed"]) for r in rows] == [(1, 0), (2, 0)]
    for row in rows:
        assert 0.0 <= row["test_dice"] <= 1.0 and 0.0 <= row["val_transformer"] <= 1.0
        assert row["cpu_s"] > 0
    printed = capsys.readouterr().out
    assert "| threads | seed | val Dice CNN |" in printed
    assert "spread (max - min) over threads: val_cnn " in printed


def write_metrics(folder: Path, values: dict[int, float]) -> None:
    folder.mkdir(parents=True)
    lines = ["epoch,step,train/loss,val/dice_mean"]
    for iteration, value in values.items():
        lines += [f"0,{iteration - 1},0.5,", f"0,{iteration - 1},,{value}"]
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")


def test_compare_curves_prints_the_mean_validation_curve_and_its_late_change(tmp_path, capsys):
    write_metrics(tmp_path / "supervised-l1-s0", {50: 0.5, 100: 0.6, 150: 0.62, 200: 0.64})
    write_metrics(tmp_path / "supervised-l1-s1", {50: 0.3, 100: 0.4, 150: 0.44, 200: 0.46})
    write_metrics(tmp_path / "advmim-l1-s0", {50: 0.2, 100: 0.7})  # killed after 100
    (tmp_path / "compare.csv").write_text("not a run folder\n")
    load("compare_curves").main([str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "| method | labeled | seeds | 50 | 100 | 150 | 200 | 100→200 |"
    assert lines[4] == "| supervised | 1 | 2 | 0.400 | 0.500 | 0.530 | 0.550 | +0.050 |"
    assert lines[5] == "| advmim | 1 | 1 | 0.200 | 0.700 |  |  |  |"


def test_compare_curves_names_a_missing_metric_and_an_empty_folder(tmp_path):
    script = load("compare_curves")
    with pytest.raises(SystemExit, match="no run folder <method>-l<cases>-s<seed>"):
        script.main([str(tmp_path)])
    write_metrics(tmp_path / "ctct-l3-s2", {10: 0.5})
    with pytest.raises(
        SystemExit,
        match=r"ctct-l3-s2/metrics.csv: no column 'val/nsd_RV'.*"
        r"\['train/loss', 'val/dice_mean'\]",
    ):
        script.main([str(tmp_path), "--metric", "val/nsd_RV"])
    with pytest.raises(SystemExit, match="--bin must be a positive number of iterations, got 0"):
        script.main([str(tmp_path), "--bin", "0"])


def test_compare_curves_averages_a_training_column_over_bins(tmp_path, capsys):
    folder = tmp_path / "advmim-l3-s0"
    folder.mkdir()
    rows = ["epoch,step,train/disc_cnn,val/dice_mean"]
    rows += [f"0,{i - 1},{v}," for i, v in [(10, 0.5), (20, 0.3), (30, 0.1), (40, 0.1)]]
    (folder / "metrics.csv").write_text("\n".join(rows) + "\n")
    load("compare_curves").main([str(tmp_path), "--metric", "train/disc_cnn", "--bin", "20"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "train/disc_cnn, mean over seeds, in bins of 20 iterations"
    assert lines[2] == "| method | labeled | seeds | 20 | 40 | 20→40 |"
    assert lines[4] == "| advmim | 3 | 1 | 0.400 | 0.100 | -0.300 |"


def write_tested_run(folder: Path, dice: dict[str, float], disc: float | None = None) -> None:
    """A finished compare run: both networks' test tables and a metrics.csv."""
    folder.mkdir(parents=True)
    head = "case_id,dice_RV,dice_Myo,dice_LV,dice_mean"
    for network, value in dice.items():
        rows = [head, "patient001,0.1,0.1,0.1,0.1", f"mean,{value},{value},{value},{value}"]
        (folder / f"test_metrics_{network}.csv").write_text("\n".join(rows) + "\n")
    columns = "epoch,step,train/disc_cnn,train/adv_cnn,train/disc_transformer,train/adv_transformer"
    lines = ["epoch,step,train/loss"] if disc is None else [columns]
    for step in (49, 149, 199):  # the last 100 iterations: steps 100..199
        lines.append(f"0,{step},0.5" if disc is None else f"0,{step},{disc},1,{disc},1")
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")


def test_domain_gap_tables_report_each_study_network_and_seed(tmp_path, capsys):
    main = tmp_path / "domain_gap_main_s0.35"
    write_tested_run(main / "supervised-l3-s0", {"cnn": 0.2, "transformer": 0.3})
    write_tested_run(main / "supervised-l3-s1", {"cnn": 0.4, "transformer": 0.5})
    write_tested_run(main / "advmim-l3-s0", {"cnn": 0.5, "transformer": 0.6}, disc=0.25)
    (main / "advmim-l3-s1").mkdir()  # unfinished: no test tables
    load("domain_gap_tables").main([str(main)])
    out = capsys.readouterr().out
    assert "| main (strength 0.35) | supervised | 3 | 2 | 30.0 ± 14.1 | 40.0 ± 14.1 |" in out
    assert "| main (strength 0.35) | advmim | 3 | 1 | 50.0 | 60.0 |" in out
    assert "| main (strength 0.35) | supervised | 3 | transformer | 0, 1 | 30.0 / 50.0 |" in out
    assert "| main (strength 0.35) | advmim | 3 | 1 | 0.250 | 1.000 | 0.250 | 1.000 |" in out
    with pytest.raises(SystemExit, match="no finished run"):
        load("domain_gap_tables").main([str(main / "advmim-l3-s1")])
