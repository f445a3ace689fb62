"""Smoke tests of the benchmark scripts: they run and print their tables (no timing asserts)."""

from __future__ import annotations

import importlib.util
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


def test_train_step_benchmark_times_real_iterations_on_cpu(capsys):
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
            "fused_sgd",
        ]
    )
    assert [r["option"] for r in rows] == ["baseline", "fused_sgd"]
    assert all(r["batch"] == "2+2" and r["ms"] > 0 for r in rows)
    out = capsys.readouterr().out
    assert "ms/iter" in out and "images/s" in out and "vs public" in out
    assert out.count("fused_sgd") == 1


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


@pytest.mark.slow
def test_the_phantom_comparison_script_rehearses_end_to_end(tmp_path):
    import os

    output = tmp_path / "compare"
    env = {**os.environ, "SMOKE": "1", "OUTPUT": str(output), "PYTHON": sys.executable}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "compare_phantom.sh")],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for method in ("supervised", "ctct", "advmim"):
        assert f"| {method} | 1 | 1 |" in done.stdout
    assert (output / "compare.png").is_file() and (output / "summary.md").is_file()


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
