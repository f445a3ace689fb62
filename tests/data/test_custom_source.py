"""A data source of the user's own: docs/data.md's example, by object and by ``class_path``."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from advmim_lightning.data import (
    AdvMIMDataModule,
    DataSource,
    DataValidationError,
    PhantomSettings,
    SourceSettings,
)
from advmim_lightning.data.phantom import generate_phantom_case
from advmim_lightning.run.cli import build_cli
from advmim_lightning.run.main import main
from tiny import cli_error

ROOT = Path(__file__).resolve().parents[2]
TINY_CLI = ROOT / "tests" / "cli" / "tiny.yaml"
SMALL = {"image_size": (32, 32), "num_workers": 0, "labeled_batch_size": 2}
SMALL["unlabeled_batch_size"] = 2


@pytest.fixture(scope="module")
def npz_source(tmp_path_factory: pytest.TempPathFactory):
    """The module of docs/data.md's example source (importable as ``npz_source``) and a
    folder of 10 phantom cases for it."""
    text = (ROOT / "docs" / "data.md").read_text()
    section = text[text.index("## Your own data") :]
    block = re.search(r"^```python\n(.*?)^```$", section, re.DOTALL | re.MULTILINE)
    assert block is not None
    folder = tmp_path_factory.mktemp("npz_source")
    (folder / "npz_source.py").write_text(block.group(1))
    data = folder / "cases"
    data.mkdir()
    for index in range(10):
        case = generate_phantom_case(index, num_slices=3, size=32, seed=0)
        image, label = np.moveaxis(case.image, 2, 0), np.moveaxis(case.label, 2, 0)
        np.savez(data / f"case_{index:02d}.npz", image=image, label=label)
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(folder))
        yield importlib.import_module("npz_source"), data


def test_a_source_object_through_the_python_api(npz_source) -> None:
    module, data = npz_source
    source = module.NpzFolder(str(data))
    assert isinstance(source, DataSource)
    dm = AdvMIMDataModule(source=source, labeled_cases=3, **SMALL)
    assert dm.source is source and dm.layout == "NpzFolder"
    assert dm.class_names == ["background", "class1", "class2", "class3"] and dm.in_channels == 1
    assert "source" not in dm.hparams and dm.hparams["labeled_batch_size"] == 2
    dm.setup(None)
    assert len(dm.case_split.labeled) == 3 and dm.case_split.test
    batch = next(iter(dm.train_dataloader()))
    assert batch["labeled"]["image"].shape == (2, 1, 32, 32)
    assert set(batch["labeled"]["case_id"]) <= {f"{c}" for c in dm.case_split.labeled}
    assert batch["unlabeled"]["image"].shape == (2, 1, 32, 32)
    item = dm.test_dataset[0]
    assert item["image"].shape == (1, 3, 32, 32) and item["label"].shape == (3, 32, 32)


def test_layout_arguments_next_to_a_source_are_refused_by_name(npz_source) -> None:
    module, data = npz_source
    with pytest.raises(ValueError) as info:
        AdvMIMDataModule(
            source=module.NpzFolder(str(data)),
            root="elsewhere",
            phantom=PhantomSettings(cases=8),
            settings=SourceSettings(val_fraction=0.3),
        )
    message = str(info.value)
    assert "source=NpzFolder(...)" in message and "root='elsewhere'" in message
    assert "phantom=PhantomSettings(cases=8," in message
    assert "settings=SourceSettings(" in message and "val_fraction=0.3" in message
    with pytest.raises(ValueError, match=r"layout='nifti'"):
        AdvMIMDataModule(source=module.NpzFolder(str(data)), layout="nifti")
    with pytest.raises(TypeError, match="source must be a DataSource"):
        AdvMIMDataModule(source="npz_source.NpzFolder")  # type: ignore[arg-type]


def test_a_source_whose_class_names_do_not_match_num_classes_is_refused(npz_source) -> None:
    module, data = npz_source

    class ThreeNames(module.NpzFolder):
        def open(self) -> None:
            super().open()
            self.class_names = self.class_names[:3]

    with pytest.raises(DataValidationError, match=r"has 3 class name\(s\).*num_classes=4"):
        AdvMIMDataModule(source=ThreeNames(str(data)), **SMALL)


def test_a_source_by_class_path_trains_through_the_cli(npz_source, tmp_path: Path) -> None:
    _, data = npz_source
    config = yaml.safe_load(TINY_CLI.read_text())
    del config["data"]["phantom"]  # a layout argument: refused next to a source
    config["data"]["source"] = {
        "class_path": "npz_source.NpzFolder",
        "init_args": {"folder": str(data), "val_fraction": 0.25},
    }
    path = tmp_path / "npz.yaml"
    path.write_text(yaml.safe_dump(config))
    runs = ["--runs_dir", str(tmp_path / "runs"), "--run_name", "npz", "--wandb_mode", "disabled"]
    main(["fit", "-c", str(path), *runs, "--trainer.fast_dev_run", "1"])
    cli = build_cli(["-c", str(path), *runs], run=False)
    assert type(cli.datamodule.source).__name__ == "NpzFolder"
    assert cli.datamodule.source.val_fraction == 0.25
    assert cli.model.class_names == ["background", "class1", "class2", "class3"]
    message = cli_error("fit", "-c", path, *runs, "--data.phantom.cases", "8")
    assert "source=NpzFolder(...)" in message and "phantom=PhantomSettings(cases=8" in message
