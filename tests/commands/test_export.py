"""``advmim export``: a segmenter as a plain file that loads (and runs) without Lightning."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from advmim_lightning.run.main import main
from tiny import cli_error

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "tests/cli/tiny.yaml")


def run(*words: object) -> None:
    main([str(w) for w in words])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """``last.ckpt`` (and ``best-*.ckpt``) of a 2-iteration run, fitted once for this file."""
    runs = tmp_path_factory.mktemp("export") / "runs"
    base = ["-c", ROOT / "configs/quickstart.yaml", "-c", TINY, "--runs_dir", runs]
    base += ["--run_name", "ex", "--wandb_mode", "disabled"]
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run("fit", *base, "--model.max_iterations", "2", "--trainer.val_check_interval", "2")
    finally:
        torch.set_num_threads(previous)
    return runs / "ex" / "checkpoints" / "last.ckpt"


def stamp(path: Path) -> tuple[int, int]:
    return path.stat().st_mtime_ns, path.stat().st_size


def test_export_round_trips_without_lightning(trained, tmp_path):
    from advmim_lightning.commands.export import load_segmenter

    for network in ("transformer", "cnn"):
        out = tmp_path / f"{network}.pt"
        run("export", trained, out, "--network", network, "--torch_export")
        program = torch.export.load(out.with_suffix(".pt2")).module()
        net = load_segmenter(out)
        state = torch.load(trained, weights_only=True)["state_dict"]
        for key, value in net.state_dict().items():
            assert torch.equal(value, state[f"{network}.{key}"])
        # The program's batch dimension is dynamic: batch 1 and 3 run, equal to the network.
        for batch in (1, 3):
            x = torch.rand(batch, 1, 64, 64)
            assert net(x).shape == (batch, 4, 64, 64)
            assert torch.allclose(program(x), net(x), atol=1e-5)


def test_export_reports_a_missing_checkpoint(tmp_path):
    message = cli_error("export", tmp_path / "nope.ckpt", tmp_path / "out.pt")
    assert "nope.ckpt does not exist" in message


def test_export_never_replaces_its_input_checkpoint(trained, tmp_path):
    copy = tmp_path / "a.ckpt"
    copy.write_bytes(trained.read_bytes())
    before = stamp(copy)
    link = tmp_path / "link.ckpt"
    link.symlink_to(copy)
    for output in (copy, Path(f"{tmp_path}/./a.ckpt"), tmp_path / "sub" / ".." / "a.ckpt", link):
        (tmp_path / "sub").mkdir(exist_ok=True)
        for extra in ((), ("--overwrite",)):
            message = cli_error("export", copy, output, *extra)
            assert f"the export file {output} is the checkpoint being exported" in message
            assert "export never replaces its input, even with --overwrite" in message
    # The .pt2 beside the output is the input: refused too.
    program_input = tmp_path / "model.pt2"
    program_input.write_bytes(trained.read_bytes())
    message = cli_error("export", program_input, tmp_path / "model.pt", "--torch_export")
    assert f"the export file {program_input} is the checkpoint being exported" in message
    assert stamp(copy) == before and link.is_symlink()
    assert not (tmp_path / "model.pt").exists()


def test_export_never_writes_in_a_run_checkpoint_folder(trained, tmp_path):
    folder = trained.parent
    before = {p: stamp(p) for p in folder.iterdir()}
    best = next(folder.glob("best-*.ckpt"))
    copy = tmp_path / "copy.ckpt"  # the input elsewhere: the run's files are other files
    copy.write_bytes(trained.read_bytes())
    for output in (folder / "last.ckpt", best, folder / "new.pt", folder / "sub" / "x.pt"):
        for extra in ((), ("--overwrite",)):
            message = cli_error("export", copy, output, *extra)
            assert f"the export file {output} lies in the run's checkpoint folder" in message
            assert "even with --overwrite" in message
    # Exporting best into last (its own run's checkpoints/).
    message = cli_error("export", best, folder / "last.ckpt", "--overwrite")
    assert "lies in the run's checkpoint folder" in message
    # A folder named checkpoints outside a run, holding .ckpt files.
    other = tmp_path / "checkpoints"
    other.mkdir()
    (other / "x.ckpt").write_bytes(b"")
    assert "lies in the run's checkpoint folder" in cli_error("export", trained, other / "y.pt")
    assert {p: stamp(p) for p in folder.iterdir()} == before
    assert not (folder / "sub").exists()


def test_export_replaces_an_existing_file_only_with_overwrite(trained, tmp_path, capsys):
    out = tmp_path / "seg.pt"
    out.write_bytes(b"mine")
    message = cli_error("export", trained, out)
    assert f"the export file {out} exists and is not replaced" in message
    assert "allow it with --overwrite" in message
    program = tmp_path / "seg.pt2"
    program.write_bytes(b"my program")
    out.unlink()
    message = cli_error("export", trained, out, "--torch_export")
    assert f"the export file {program} exists and is not replaced" in message
    assert not out.exists() and program.read_bytes() == b"my program"
    out.write_bytes(b"mine")
    capsys.readouterr()

    run("export", trained, out, "--torch_export", "--overwrite")

    assert capsys.readouterr().out.split() == ["wrote", str(out), "wrote", str(program)]
    assert torch.load(out, weights_only=True)["format"] == "advmim-segmenter"
    torch.export.load(program)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.pt", "seg.pt2"]  # no temp files
    # A file that appears between the checks and the write is not replaced either.
    from advmim_lightning.commands import export

    late = tmp_path / "late.pt"
    save = torch.save

    def save_and_race(payload, tmp):
        save(payload, tmp)
        late.write_bytes(b"late")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(export.torch, "save", save_and_race)
        with pytest.raises(ValueError, match=r"late\.pt exists and is not replaced"):
            export.export_segmenter(trained, late)
    assert late.read_bytes() == b"late"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["late.pt", "seg.pt", "seg.pt2"]


def test_export_of_a_network_without_constructor_arguments_names_the_cause(trained, tmp_path):
    checkpoint = torch.load(trained, weights_only=True)
    checkpoint["hyper_parameters"]["cnn"] = {
        "class_path": "__main__.PixelMaskedSegmenter",
        "init_args": None,
    }
    custom = tmp_path / "custom_cnn.ckpt"
    torch.save(checkpoint, custom)

    message = cli_error("export", custom, tmp_path / "cnn.pt", "--network", "cnn")

    assert (
        f"{custom}: the cnn network (__main__.PixelMaskedSegmenter) stores no constructor "
        "arguments (its class has no `config` property), so it cannot be rebuilt" in message
    )
    assert f"AdvMIMModule.load_from_checkpoint('{custom}', cnn=MyNet(...)).cnn" in message
    assert "ADVMIM_TRUSTED_CLASSES" not in message
    assert not (tmp_path / "cnn.pt").exists()
    # The library's transformer of the same checkpoint exports (the cnn is not imported).
    run("export", custom, tmp_path / "transformer.pt")
    from advmim_lightning.commands.export import load_segmenter

    assert type(load_segmenter(tmp_path / "transformer.pt")).__name__ == "SwinUNet"
    # A class outside the library named by the exported network is still refused.
    checkpoint["hyper_parameters"]["transformer"]["class_path"] = "evil.Net"
    torch.save(checkpoint, custom)
    message = cli_error("export", custom, tmp_path / "t2.pt")
    assert "names the class 'evil.Net'" in message
    assert os.listdir(tmp_path).count("t2.pt") == 0
