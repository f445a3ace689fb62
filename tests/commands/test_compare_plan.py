"""``compare_plan``: the lists, the stated settings, the notes and each combination's words."""

from __future__ import annotations

from pathlib import Path

import pytest

from advmim_lightning.commands.compare_plan import (
    NOT_SET,
    PER_METHOD_SETTINGS,
    SETTING_USERS,
    Combination,
    check_lists,
    check_split_file,
    combination_job,
    combination_settings,
    method_rank,
    notes_on_settings,
    settings_conflicts,
    stated_settings,
)
from advmim_lightning.method.config import METHOD_DEFAULTS


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_combination_name():
    assert Combination("advmim", 3, 0).name == "advmim-l3-s0"
    assert Combination("supervised", 14, 12).name == "supervised-l14-s12"


def test_check_lists_returns_lists_and_refuses_bad_values():
    assert check_lists(("ctct", "advmim"), (1, 3), range(2)) == (["ctct", "advmim"], [1, 3], [0, 1])
    for args, message in (
        ((["nope", "advmim"], [1], [0]), "unknown method(s) ['nope']; expected some of ["),
        (([], [1], [0]), "methods is empty; expected at least one value"),
        ((["advmim"], [], [0]), "labeled_cases is empty"),
        ((["advmim"], [1], []), "seeds is empty"),
        ((["advmim", "advmim"], [1], [0]), "methods lists a value twice: ['advmim', 'advmim']"),
        ((["advmim"], [3, 3], [0]), "labeled_cases lists a value twice: [3, 3]"),
        ((["advmim"], [1], [0, 0]), "seeds lists a value twice: [0, 0]"),
        ((["advmim"], [1.5], [0]), "labeled_cases must be integers, got [1.5]"),
        ((["advmim"], [1], [True]), "seeds must be integers, got [True]"),
        ((["advmim"], [0, 2], [0]), "labeled_cases must be >= 1, got [0, 2]"),
    ):
        with pytest.raises(ValueError) as err:
            check_lists(*args)
        assert message in str(err.value)


def test_stated_settings_flattens_files_and_reads_overrides(tmp_path):
    first = write(
        tmp_path / "a.yaml",
        "seed_everything: 3\nmodel:\n  lr: 0.03\n  max_iterations: 10\n"
        "  cnn:\n    class_path: advmim_lightning.networks.UNet\n    init_args: {channels: [4]}\n"
        "trainer:\n  max_steps: 5\n",
    )
    second = write(tmp_path / "b.yaml", "model:\n  max_iterations: 20\n")
    overrides = ["--model.lr", "0.1", "--trainer.max_steps=7", "--trainer.fast_dev_run"]
    overrides += ["--data.root", "/data"]

    stated, from_files = stated_settings([first, second], overrides)

    assert stated == {
        "seed_everything": 3,
        "model.lr": "0.1",  # overrides stay text, as typed
        "model.max_iterations": 20,  # later files win
        "model.cnn": {
            "class_path": "advmim_lightning.networks.UNet",
            "init_args": {"channels": [4]},
        },
        "trainer.max_steps": "7",
        "trainer.fast_dev_run": None,  # a flag without a value
        "data.root": "/data",
    }
    assert from_files == {"seed_everything", "model.max_iterations", "model.cnn"}


def test_stated_settings_refuses_what_compare_sets_and_bad_files(tmp_path):
    for word, hint in (
        ("--model.method", "use --methods"),
        ("--data.labeled_cases", "use --labeled_cases"),
        ("--data.seed", "use --seeds"),
        ("--model.rng_seed=1", "use --seeds"),
        ("--runs_dir", "use --output"),
        ("--ckpt_path", "use --checkpoint (and resumes from last.ckpt by itself)"),
    ):
        with pytest.raises(ValueError) as err:
            stated_settings([], [word, "x"])
        key = word[2:].partition("=")[0]
        assert str(err.value) == f"--{key} is set by compare for every combination; {hint}"
    with pytest.raises(FileNotFoundError, match=r"config file .*missing\.yaml does not exist"):
        stated_settings([str(tmp_path / "missing.yaml")], [])
    bad = write(tmp_path / "bad.yaml", "model: [unclosed\n")
    with pytest.raises(ValueError, match=f"config file {bad} is not valid YAML"):
        stated_settings([bad], [])
    listed = write(tmp_path / "list.yaml", "- a\n- b\n")
    with pytest.raises(ValueError) as err:
        stated_settings([listed], [])
    assert str(err.value) == f"config file {listed} holds a list; expected a mapping"
    empty = write(tmp_path / "empty.yaml", "")
    assert stated_settings([empty], []) == ({}, set())


def test_check_split_file(tmp_path):
    fixing = write(tmp_path / "fixing.json", '{"labeled": ["a"], "test": ["b"]}')
    with pytest.raises(ValueError) as err:
        check_split_file({"data.settings.split_file": fixing})
    assert str(err.value).startswith(
        f"data.settings.split_file {fixing} lists the labeled cases ('labeled' key), which "
        "wins over data.labeled_cases"
    )
    check_split_file({})
    check_split_file({"data.settings.split_file": None})
    check_split_file({"data.settings.split_file": write(tmp_path / "ok.json", '{"test": ["b"]}')})
    check_split_file(
        {"data.settings.split_file": write(tmp_path / "null.json", '{"labeled": null}')}
    )
    check_split_file({"data.settings.split_file": str(tmp_path / "missing.json")})  # fit reports it
    check_split_file({"data.settings.split_file": write(tmp_path / "bad.json", "{not json")})


def test_per_method_settings_and_their_users():
    assert "lr" in PER_METHOD_SETTINGS and "grad_clip_norm" in PER_METHOD_SETTINGS
    assert SETTING_USERS["mask_block_size"] == ("advmim",)
    assert SETTING_USERS["rampup_length"] == ("advmim", "ctct")
    assert set(SETTING_USERS["lr"]) == {m for m, d in METHOD_DEFAULTS.items() if "lr" in d}


def test_notes_on_settings():
    stated = {
        "model.lr": 0.03,
        "model.mask_block_size": 16,
        "model.method": "advmim",
        "data.seed": 0,
        "trainer.max_steps": 5,
    }
    notes = notes_on_settings(stated, {"model.lr", "model.method", "data.seed"}, ["ctct", "advmim"])
    lr = ", ".join(f"{m} {METHOD_DEFAULTS[m]['lr']}" for m in ("ctct", "advmim"))
    assert notes == [
        "model.lr=0.03 from the config is a per-method setting: each method uses its own "
        f"default instead ({lr}); give --model.lr to compare to set it for every method that "
        "uses it",
        "model.mask_block_size=16 is used by advmim only; ctct ignores it",
        "model.method=advmim, data.seed=0 from the config: replaced in each run by its method, "
        "labeled cases and seed",
    ]
    # Given on the command line, a per-method setting is nobody's default: no note.
    assert notes_on_settings({"model.lr": "0.1"}, set(), ["advmim"]) == []
    two = notes_on_settings({"model.rampup_length": 5}, set(), ["supervised", "advmim"])
    assert two == ["model.rampup_length=5 is used by advmim and ctct only; supervised ignores it"]
    both = notes_on_settings({"model.mask_ratio": 0.5}, set(), ["supervised", "ctct"])
    assert both == ["model.mask_ratio=0.5 is used by advmim only; supervised and ctct ignore it"]


def test_combination_job_words(tmp_path):
    stated = {"model.lr": 0.03, "model.adversarial_weight": "0.002", "model.max_iterations": "4"}
    from_files = {"model.lr"}
    overrides = ["--model.adversarial_weight", "0.002", "--model.max_iterations", "4"]
    combo = Combination("supervised", 3, 1)

    job = combination_job(
        combo, ["a.yaml", "b.yaml"], overrides, stated, from_files, tmp_path, "last"
    )

    words = ["-c", "a.yaml", "-c", "b.yaml", *overrides, "--model.method", "supervised"]
    words += ["--data.labeled_cases", "3", "--seed_everything", "1", "--data.seed", "1"]
    words += [
        "--model.rng_seed",
        "1",
        "--runs_dir",
        str(tmp_path),
        "--run_name",
        "supervised-l3-s1",
    ]
    # lr from a file -> the method's default; the adversarial weight (AdvMIM's) -> out of the way
    words += ["--model.lr", "null", "--model.adversarial_weight", "null"]
    assert job == {
        "run_dir": str(tmp_path / "supervised-l3-s1"),
        "fit": ["fit", *words],
        "test": ["test", *words, "--wandb_mode", "disabled"],
        "checkpoint": "last",
        "networks": ["cnn", "transformer"],  # each tested in turn
        "resume": False,
    }
    # AdvMIM takes the adversarial weight as given; a last.ckpt makes the fit resume.
    last = tmp_path / "advmim-l3-s1" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"")
    job = combination_job(
        Combination("advmim", 3, 1), [], overrides, stated, from_files, tmp_path, "best"
    )
    assert job["resume"] is True
    ensemble = combination_job(
        Combination("advmim", 3, 1), [], [], {}, set(), tmp_path, "best", ["ensemble"]
    )
    assert ensemble["networks"] == ["ensemble"]
    assert job["fit"][-2:] == ["--ckpt_path", str(last)]
    assert "--ckpt_path" not in job["test"]
    assert job["fit"][-6:-2] == ["--run_name", "advmim-l3-s1", "--model.lr", "null"]


def test_combination_settings_are_what_the_combination_runs_with():
    stated = {
        "model.lr": 0.03,  # from a file: each method's default
        "model.mask_block_size": "16",  # given (the supervised module ignores it)
        "model.adversarial_weight": "0.002",  # given, AdvMIM's only: null for the others
        "model.max_iterations": "6",
        "trainer.val_check_interval": "2",
        "data.image_size": [64, 64],
        "model.cnn": {"class_path": "advmim_lightning.networks.UNet", "init_args": {"c": (4, 8)}},
        "model.method": "advmim",  # varied by compare: left out
        "seed_everything": 0,
        "wandb_mode": "disabled",  # changes no result: left out
        "trainer.enable_progress_bar": "false",
        "data.num_workers": 2,
        "panels.scale": 3,
        "trainer.fast_dev_run": None,
        "model.rampup_length": "null",
    }
    from_files = {"model.lr", "data.image_size", "model.cnn", "model.method", "seed_everything"}

    supervised = combination_settings(Combination("supervised", 1, 0), stated, from_files, "best")
    advmim = combination_settings(Combination("advmim", 1, 0), stated, from_files, "last")

    assert supervised == {
        "--checkpoint": "best",
        "data.image_size": [64, 64],
        "model.cnn": {"class_path": "advmim_lightning.networks.UNet", "init_args": {"c": [4, 8]}},
        "model.adversarial_weight": None,
        "model.lr": None,
        "model.mask_block_size": 16,
        "model.max_iterations": 6,
        "model.rampup_length": None,
        "trainer.fast_dev_run": None,
        "trainer.val_check_interval": 2,
    }
    assert list(supervised) == sorted(supervised)
    assert advmim == {**supervised, "--checkpoint": "last", "model.adversarial_weight": 0.002}
    # Same settings however the overrides are written.
    again = combination_settings(
        Combination("advmim", 1, 0), {**stated, "model.max_iterations": "6 "}, from_files, "last"
    )
    assert again == advmim


def test_settings_conflicts():
    recorded = {"--checkpoint": "best", "model.max_iterations": 4, "model.lr": None, "x": [1]}
    current = {"--checkpoint": "best", "model.max_iterations": 6, "model.lr": 0.1, "y": True}
    assert settings_conflicts(recorded, current) == [
        ("model.lr", None, 0.1),
        ("model.max_iterations", 4, 6),
        ("x", [1], NOT_SET),
        ("y", NOT_SET, True),
    ]
    assert settings_conflicts(recorded, dict(recorded)) == []
    assert NOT_SET == "(not set)"


@pytest.mark.parametrize(
    ("name", "combination"),
    [
        ("advmim-l3-s0", Combination("advmim", 3, 0)),
        ("supervised-l12-s7", Combination("supervised", 12, 7)),
        ("advmim-l3-s0.bak", None),
        ("summary.md", None),
        ("ctct-l3", None),
    ],
)
def test_a_run_folder_name_gives_its_combination_back(name, combination):
    assert Combination.from_name(name) == combination
    if combination is not None:
        assert combination.name == name


def test_tables_list_the_default_methods_first_in_their_order():
    assert sorted(["advmim", "mine", "supervised", "ctct"], key=method_rank) == [
        "supervised",
        "ctct",
        "advmim",
        "mine",
    ]
