"""What ``advmim`` refuses (docs/refusals.md), through the command line on generated data.

Each test fails without its check: evaluation without weights, predictions that would merge,
replace or land among the data, two processes on one run, a resume that does not fit, a bad
checkpoint however it is named, an evaluation that rewrites the fit's record, and
``--ckpt_path best``.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from advmim_lightning.data.synthetic import write_tiny_acdc, write_tiny_nifti
from advmim_lightning.run.main import main
from tiny import cli_error

ROOT = Path(__file__).resolve().parents[2]
TINY = str(Path(__file__).with_name("tiny.yaml"))
QUICKSTART = ["-c", str(ROOT / "configs/quickstart.yaml"), "-c", TINY]
NIFTI = ["-c", str(ROOT / "configs/nifti/advmim.yaml"), "-c", TINY]
EVALUATIONS = ("validate", "test", "predict")
UNTRAINED = ["--allow_random_weights", "true"]


def run(*words: object) -> None:
    main([str(w) for w in words])


def on(runs: Path, name: str, *extra: object, configs: list[str] = QUICKSTART) -> list[str]:
    """Config, run folder and extra words of a command (wandb off)."""
    words = [*configs, "--runs_dir", runs, "--run_name", name, "--wandb_mode", "disabled", *extra]
    return [str(w) for w in words]


def files_of(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path -> SHA-1 of its bytes)."""
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A runs folder with one 2-iteration run, ``trained``, validated once (last + best)."""
    runs = tmp_path_factory.mktemp("runs")
    torch.set_num_threads(1)
    run(
        "fit",
        *on(runs, "trained", "--model.max_iterations", "2", "--trainer.val_check_interval", "2"),
    )
    names = sorted(p.name for p in (runs / "trained" / "checkpoints").iterdir())
    assert names == ["best-step=8.ckpt", "last.ckpt"]
    return runs


@pytest.fixture
def runs(trained, tmp_path) -> Path:
    """A copy of the trained runs folder this test may change."""
    return Path(shutil.copytree(trained, tmp_path / "runs"))


# ---------------------------------------------------------------- 1. evaluating without weights


def test_evaluation_without_a_checkpoint_is_refused_naming_the_run_folder(trained, tmp_path):
    typo = trained / "trianed"
    for subcommand in EVALUATIONS:
        for ckpt in ([], ["--ckpt_path", "last"], ["--ckpt_path", "best"]):
            message = cli_error(subcommand, *on(trained, "trianed", *ckpt))
            assert f"the run folder {typo} has no checkpoint" in message, message
            assert f"runs with checkpoints in {trained}: trained" in message, message
        message = cli_error(subcommand, *on(trained, "trained"))  # the right run, no checkpoint
        assert f"advmim {subcommand} needs trained weights and has no --ckpt_path" in message
        assert "holds checkpoints/best-step=8.ckpt, checkpoints/last.ckpt" in message
        assert "--allow_random_weights true" in message
    assert not typo.exists()  # refused before anything was written
    # a fast_dev_run fit saves no checkpoint (Lightning 2.6 wrote last.ckpt at its end), so
    # evaluating its run is refused too; with the flag, the smoke test runs on purpose
    run("fit", *on(tmp_path, "smoke", "--trainer.fast_dev_run", "1"))
    message = cli_error("test", *on(tmp_path, "smoke", "--ckpt_path", "last"))
    assert f"the run folder {tmp_path / 'smoke'} has no checkpoint" in message
    run("test", *on(tmp_path, "smoke", *UNTRAINED))
    assert (tmp_path / "smoke" / "test_metrics.csv").is_file()


# ---------------------------------------------------------------- 2. the prediction writer


@pytest.fixture
def nifti(tmp_path) -> Path:
    """A NIfTI dataset whose two test cases are ``case+8`` and ``case_8``."""
    root = write_tiny_nifti(tmp_path / "nifti", size=64, num_test=2)
    for old, new in (("case_008", "case+8"), ("case_009", "case_8")):
        (root / "imagesTs" / f"{old}_0000.nii.gz").rename(root / "imagesTs" / f"{new}_0000.nii.gz")
        (root / "labelsTs" / f"{old}.nii.gz").rename(root / "labelsTs" / f"{new}.nii.gz")
    return root


def predict_words(tmp_path: Path, root: Path, *extra: object) -> list[object]:
    """``advmim predict`` of untrained networks on the NIfTI set ``root``, into run ``pred``."""
    return [
        "predict",
        *on(tmp_path / "runs", "pred", "--data.root", root, *UNTRAINED, *extra, configs=NIFTI),
    ]


def predict_nifti(tmp_path: Path, root: Path, *extra: object) -> None:
    run(*predict_words(tmp_path, root, *extra))


def test_prediction_files_go_to_the_run_folder_one_per_case(tmp_path, nifti):
    predict_nifti(tmp_path, nifti)  # no output_dir: <run folder>/predictions
    out = tmp_path / "runs" / "pred" / "predictions"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["case%2B8.nii.gz", "case_8.nii.gz"]  # escaped, never merged
    for name in names:
        case = unquote(name.removesuffix(".nii.gz"))
        source = nib.load(nifti / "imagesTs" / f"{case}_0000.nii.gz")
        assert nib.load(out / name).shape == source.shape


def test_existing_prediction_files_are_kept_unless_overwrite(tmp_path, nifti):
    out = tmp_path / "preds"
    predict_nifti(tmp_path, nifti, "--prediction_writer.output_dir", out)
    (out / "case%2B8.nii.gz").unlink()
    (out / "case_8.nii.gz").write_bytes(b"the user's own file")
    message = cli_error(*predict_words(tmp_path, nifti, "--prediction_writer.output_dir", out))
    assert (
        f"prediction_writer.output_dir {out} already holds 1 of the 2 prediction files "
        "(case_8.nii.gz)" in message
    )
    assert "--prediction_writer.overwrite true" in message
    # refused before any case was written: the other file is not back, the user's is intact
    assert sorted(p.name for p in out.iterdir()) == ["case_8.nii.gz"]
    assert (out / "case_8.nii.gz").read_bytes() == b"the user's own file"

    predict_nifti(
        tmp_path,
        nifti,
        "--prediction_writer.output_dir",
        out,
        "--prediction_writer.overwrite",
        "true",
    )
    assert sorted(p.name for p in out.iterdir()) == ["case%2B8.nii.gz", "case_8.nii.gz"]
    assert nib.load(out / "case_8.nii.gz").shape == (64, 64, 3)


def test_the_datasets_own_folders_are_refused_as_prediction_output(tmp_path, nifti):
    before = files_of(nifti)
    link = tmp_path / "looks_outside"
    link.symlink_to(nifti / "labelsTs")
    for folder in ("labelsTs", "imagesTs", "labelsTr", ".", "new_folder_inside"):
        out = nifti / folder
        message = cli_error(*predict_words(tmp_path, nifti, "--prediction_writer.output_dir", out))
        assert (
            f"prediction_writer.output_dir {out} lies in the dataset folder (data.root) "
            f"{nifti.resolve()}" in message
        )
    message = cli_error(*predict_words(tmp_path, nifti, "--prediction_writer.output_dir", link))
    assert f"prediction_writer.output_dir {link} lies in the dataset folder" in message
    assert files_of(nifti) == before  # the ground truth is untouched, nothing was added

    acdc = write_tiny_acdc(tmp_path / "acdc", num_patients=6, size=64, spacing=True)
    acdc_words = [
        *on(
            tmp_path / "runs",
            "acdc",
            "--data.root",
            acdc,
            "--data.labeled_cases",
            "2",
            *UNTRAINED,
            "--prediction_writer.output_dir",
            acdc / "data",
            configs=["-c", str(ROOT / "configs/acdc/advmim.yaml"), "-c", TINY],
        )
    ]
    message = cli_error("predict", *acdc_words)
    assert f"{acdc / 'data'} lies in the dataset folder (data.root)" in message


# ---------------------------------------------------------------- 3. one process per run

HOLD = """
import sys, time
from advmim_lightning.run.folders import RunFolderLock
lock = RunFolderLock(sys.argv[1], "advmim fit").acquire()  # held while the object lives
print("holding", flush=True)
time.sleep(600)
"""


def test_a_run_held_by_a_process_stops_a_second_one_and_a_killed_holder_blocks_nothing(
    runs, tmp_path
):
    import advmim_lightning

    run_dir = runs / "trained"
    before = files_of(run_dir)
    package_parent = str(Path(advmim_lightning.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": package_parent, "OMP_NUM_THREADS": "1"}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        for subcommand, extra in (
            ("fit", ["--ckpt_path", "last", "--model.max_iterations", "3"]),
            ("test", ["--ckpt_path", "last"]),
            ("predict", ["--ckpt_path", "best"]),
        ):
            message = cli_error(subcommand, *on(runs, "trained", *extra))
            assert (
                f"the run folder {run_dir} is in use by PID {holder.pid} (advmim fit) "
                f"(lock {run_dir / '.advmim.lock'})" in message
            ), message
        after = files_of(run_dir)
        assert after.pop(".advmim.lock") != before.pop(".advmim.lock")  # the holder's PID
        assert after == before  # nothing else was written
    finally:
        holder.kill()
        holder.wait(timeout=60)
    # the killed holder's lock went with it: a fit takes the run (and gives it back when done)
    run("fit", *on(runs, "trained", "--ckpt_path", "last", "--model.max_iterations", "3",
                   "--trainer.limit_val_batches", "0"))  # fmt: skip
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["max_iterations"] == 3
    # the run was copied (its checkpoints name another folder): last.ckpt is still the one
    # refreshed, not a last-v1.ckpt beside a stale last.ckpt
    assert "last-v1.ckpt" not in [p.name for p in (run_dir / "checkpoints").iterdir()]
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["state_dict"]["iteration"] == 3
    assert (run_dir / ".advmim.lock").read_text() == ""  # no stale PID left behind
    run("test", *on(runs, "trained", "--ckpt_path", "last"))  # the next process gets the run
    assert (run_dir / "test_metrics.csv").is_file()


def test_only_the_launching_process_of_a_ddp_run_locks_it(monkeypatch):
    from advmim_lightning.run.folders import launching_process

    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert launching_process()
    monkeypatch.setenv("LOCAL_RANK", "1")  # a worker started by Lightning's launcher
    assert not launching_process()
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("NODE_RANK", "1")  # rank 0 of the second node
    assert not launching_process()
    monkeypatch.setenv("NODE_RANK", "0")
    monkeypatch.setenv("RANK", "3")  # torchrun
    assert not launching_process()


# ---------------------------------------------------------------- 5. a resume that does not fit


def _three_class_nifti(root: Path) -> Path:
    write_tiny_nifti(root, size=64)
    for path in [*root.glob("labelsTr/*.nii.gz"), *root.glob("labelsTs/*.nii.gz")]:
        image = nib.load(path)
        labels = np.minimum(np.asarray(image.dataobj), 2).astype(np.uint8)
        nib.save(nib.Nifti1Image(labels, image.affine), path)
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = dict(list(meta["labels"].items())[:3])
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_a_resume_that_does_not_fit_stops_before_anything_is_written(runs, tmp_path):
    run_dir = runs / "trained"
    last, best = run_dir / "checkpoints/last.ckpt", run_dir / "checkpoints/best-step=8.ckpt"
    before = files_of(run_dir)
    for ckpt, used in (("last", last), ("best", best), (str(last), last)):
        message = cli_error(
            "fit", *on(runs, "trained", "--ckpt_path", ckpt, "--model.method", "ctct")
        )
        assert (
            f"checkpoint {used} does not fit this run: model.method is 'advmim' in the "
            "checkpoint but 'ctct' here" in message
        ), message
    message = cli_error(
        "fit",
        *on(
            runs,
            "trained",
            "--ckpt_path",
            "last",
            "--model.cnn.init_args.channels",
            "[4, 8, 8, 8, 16]",
        ),
    )
    assert (
        "model.cnn.init_args.channels is [4, 8, 8, 8, 8] in the checkpoint but "
        "[4, 8, 8, 8, 16] here" in message
    )

    # a 4-class checkpoint and 3-class data: the data decides num_classes
    three = _three_class_nifti(tmp_path / "three")
    for subcommand in ("fit", "test"):
        message = cli_error(
            subcommand,
            *on(
                runs,
                "trained",
                "--data.root",
                three,
                "--data.num_classes",
                "3",
                "--ckpt_path",
                "last",
                configs=NIFTI,
            ),
        )
        assert (
            f"checkpoint {last} does not fit this run: data.num_classes is 4 in the "
            "checkpoint but 3 here" in message
        ), message

    # any other state-dict mismatch is named by its entry
    stored = torch.load(last, weights_only=True)
    missing = {**stored, "state_dict": dict(stored["state_dict"])}
    del missing["state_dict"]["cnn.head.bias"]
    torch.save(missing, tmp_path / "missing.ckpt")
    message = cli_error("test", *on(runs, "trained", "--ckpt_path", tmp_path / "missing.ckpt"))
    assert (
        "state-dict entries only in the checkpoint: none; only in the model built here: "
        "cnn.head.bias" in message
    )
    reshaped = {**stored, "state_dict": dict(stored["state_dict"])}
    reshaped["state_dict"]["disc_cnn.classifier.weight"] = torch.zeros(3, 3)
    torch.save(reshaped, tmp_path / "reshaped.ckpt")
    message = cli_error("fit", *on(runs, "trained", "--ckpt_path", tmp_path / "reshaped.ckpt"))
    assert (
        "state-dict entry disc_cnn.classifier.weight has shape [3, 3] in the checkpoint" in message
    )
    # a fit from initial weights into the run would mix two runs in one record
    message = cli_error("fit", *on(runs, "trained", "--model.max_iterations", "1"))
    assert (
        f"the run folder {run_dir} already holds a run (checkpoints/best-step=8.ckpt, "
        "checkpoints/last.ckpt)" in message
    ), message
    assert files_of(run_dir) == before  # config.yaml, metrics.csv, checkpoints as they were


# ---------------------------------------------------------------- 6. one check for every path

_TEXT = b"model: not a checkpoint\n"


def _bad_bytes(kind: str, good: bytes) -> bytes:
    if kind == "empty":
        return b""
    if kind == "truncated":
        return good[: len(good) // 2]
    if kind == "foreign-pickle":
        return pickle.dumps({"state_dict": {}, "payload": Path("x")})
    if kind == "text":
        return _TEXT
    assert kind == "other-lightning-model"
    import io

    buffer = io.BytesIO()
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": {"lr": 1}}, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("empty", "is empty (0 bytes)"),
        ("truncated", "is not a readable checkpoint"),
        ("foreign-pickle", "is not a readable checkpoint"),
        ("text", "is not a readable checkpoint"),
        ("other-lightning-model", "is not an AdvMIMModule checkpoint"),
    ],
)
def test_every_way_to_name_a_checkpoint_goes_through_the_same_check(
    trained, tmp_path, kind, reason
):
    good = (trained / "trained" / "checkpoints" / "last.ckpt").read_bytes()
    folder = tmp_path / "runs" / "broken" / "checkpoints"
    folder.mkdir(parents=True)
    bad = _bad_bytes(kind, good)
    for name in ("last.ckpt", "best-step=4.ckpt"):
        (folder / name).write_bytes(bad)
    given = tmp_path / "given.ckpt"
    given.write_bytes(bad)
    for ckpt, path in (
        ("last", folder / "last.ckpt"),
        ("best", folder / "best-step=4.ckpt"),
        (str(given), given),
    ):
        for subcommand in ("fit", "test") if ckpt != "last" else ("fit", *EVALUATIONS):
            message = cli_error(subcommand, *on(tmp_path / "runs", "broken", "--ckpt_path", ckpt))
            assert message.startswith(f"advmim: error: --ckpt_path {ckpt}: "), message
            assert str(path) in message and reason in message, message
    from advmim_lightning import AdvMIMModule

    with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        AdvMIMModule.load_from_checkpoint(given)
    with pytest.raises(SystemExit):
        run("export", given, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


# ------------------------------------------------- 7 and 11. evaluations and --ckpt_path best


def test_evaluations_write_their_own_config_and_best_is_the_best_scored_checkpoint(runs):
    run_dir = runs / "trained"
    best = run_dir / "checkpoints" / "best-step=8.ckpt"
    kept = {name: (run_dir / name).read_bytes() for name in ("config.yaml", "hparams.yaml")}
    for subcommand in EVALUATIONS:
        other_data = ["--data.phantom.seed", "1", "--model.eval_network", "cnn"]
        run(subcommand, *on(runs, "trained", "--ckpt_path", "best", *other_data))
        saved = yaml.safe_load((run_dir / f"{subcommand}_config.yaml").read_text())
        assert saved["ckpt_path"] == str(best)
        assert saved["data"]["phantom"]["seed"] == 1 and saved["model"]["eval_network"] == "cnn"
        assert yaml.safe_load((run_dir / f"{subcommand}_hparams.yaml").read_text())
    for name, content in kept.items():
        assert (run_dir / name).read_bytes() == content, f"{name} was rewritten"
    assert sorted(p.name for p in (run_dir / "predictions").iterdir())  # the default folder

    # several best-*.ckpt (a run restarted without resuming): the highest stored score wins
    stored = torch.load(best, weights_only=True)
    (state,) = [s for s in stored["callbacks"].values() if s.get("monitor") == "val/dice_mean"]
    better = run_dir / "checkpoints" / "best-step=4.ckpt"
    state["current_score"] = torch.tensor(float(state["current_score"]) + 0.5)
    torch.save(stored, better)
    run("validate", *on(runs, "trained", "--ckpt_path", "best"))
    saved = yaml.safe_load((run_dir / "validate_config.yaml").read_text())
    assert saved["ckpt_path"] == str(better)
    state["current_score"] = None  # a best file without a score cannot be ranked
    torch.save(stored, better)
    message = cli_error("validate", *on(runs, "trained", "--ckpt_path", "best"))
    assert f"--ckpt_path best: {better} stores no val/dice_mean score" in message
