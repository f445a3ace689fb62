"""A second, unlabeled source: pools, evaluation split, own normalisation, and the refusals."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from advmim_lightning.data import (
    AdvMIMDataModule,
    DataValidationError,
    ImageFolderSource,
    PhantomSettings,
    PhantomSource,
    SecondPhantomSettings,
    SourceSettings,
)
from advmim_lightning.data.synthetic import write_tiny_image_folder, write_tiny_nifti

TINY = {"image_size": (32, 32), "num_workers": 0, "labeled_batch_size": 2}
PHANTOM = PhantomSettings(cases=6, slices=3, size=32)


def make_dm(**kwargs) -> AdvMIMDataModule:
    return AdvMIMDataModule(**{**TINY, "phantom": PHANTOM, **kwargs})


@pytest.fixture(scope="module")
def target_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 unlabeled target-domain images, 3 labeled evaluation images."""
    return write_tiny_image_folder(tmp_path_factory.mktemp("target"))


def folder_source(root: Path, **kwargs) -> ImageFolderSource:
    return ImageFolderSource(
        str(root), images="images", eval_images="imagesVal", eval_labels="labelsVal", **kwargs
    )


def test_the_unlabeled_pool_is_the_second_source_and_evaluation_stays_on_the_main_one():
    dm = make_dm(unlabeled_layout="phantom")
    second = dm.unlabeled_source
    assert isinstance(second, PhantomSource)
    assert second.phantom == PhantomSettings(cases=6, slices=3, size=32, seed=1, domain="target")
    dm.setup("fit")
    dm.setup("test")
    main_split, second_split = dm.resolve_split(), dm.resolve_unlabeled_split()
    assert second_split.labeled == []  # declared unlabeled: no labeled case
    assert {v.case_id for v in dm.labeled_dataset.volumes} == set(main_split.labeled)
    unlabeled = dm.unlabeled_dataset.volumes
    assert {v.case_id for v in unlabeled} == set(second_split.unlabeled)
    assert all(v.label is None for v in unlabeled)
    assert [v.source for v in unlabeled] == [f"phantom:{c}" for c in second_split.unlabeled]
    assert dm.test_dataset.case_ids() == main_split.test
    # the target phantom's intensities, not the source's: generated with another seed
    target = second.generated()[0].image
    assert not np.array_equal(target, dm.source.generated()[0].image)
    assert dm.hparams["unlabeled_layout"] == "phantom" and dm.hparams["eval_source"] == "main"
    batch = next(iter(dm.train_dataloader()))
    assert batch["unlabeled"]["image"].shape == (8, 1, 32, 32)


def test_both_pools_and_the_second_sources_test_split():
    dm = make_dm(unlabeled_layout="phantom", unlabeled_pool="both", eval_source="second")
    dm.setup("fit")
    dm.setup("test")
    main_split, second_split = dm.resolve_split(), dm.resolve_unlabeled_split()
    assert len(dm.unlabeled_dataset.volumes) == len(main_split.unlabeled) + len(
        second_split.unlabeled
    )
    assert dm.test_dataset.case_ids() == second_split.test
    assert all(v.label is not None for v in dm.test_dataset.volumes)


def test_the_second_phantom_takes_the_fields_given_and_keeps_the_default_for_the_others():
    """A field of ``unlabeled_phantom`` changes the default second phantom (``phantom`` in the
    target domain with the next seed); the fields not given stay the default's, not
    ``PhantomSettings``' (40 cases of 128 x 128 in the source domain)."""
    dm = make_dm(unlabeled_layout="phantom", unlabeled_phantom={"domain_strength": 0.35})
    assert dm.unlabeled_source.phantom == PhantomSettings(
        cases=6, slices=3, size=32, seed=1, domain="target", domain_strength=0.35
    )
    assert dm.hparams["unlabeled_phantom"] == {
        **dict.fromkeys(["cases", "slices", "size", "seed", "heart_scale", "domain"]),
        "domain_strength": 0.35,
    }
    # the same second phantom again from the hyper-parameters (a checkpoint's)
    again = AdvMIMDataModule(**dm.hparams)
    assert again.unlabeled_source.phantom == dm.unlabeled_source.phantom
    # a whole PhantomSettings is used as it is, the default's fields included
    whole = PhantomSettings(cases=4, slices=2, size=32, seed=7)
    assert (
        make_dm(unlabeled_layout="phantom", unlabeled_phantom=whole).unlabeled_source.phantom
        == whole
    )
    explicit = SecondPhantomSettings(cases=4, domain="source", seed=0)
    assert make_dm(
        unlabeled_layout="phantom", unlabeled_phantom=explicit
    ).unlabeled_source.phantom == PhantomSettings(cases=4, slices=3, size=32, seed=0)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"domain": "source", "domain_strength": 0.35},
            "unlabeled_phantom.domain_strength=0.35 applies to domain 'target' only; the source "
            "domain is the default phantom (set unlabeled_phantom.domain: target) (the second "
            "phantom: {'domain': 'source', 'domain_strength': 0.35} given over the default "
            "second phantom, data.phantom in the target domain with seed 1)",
        ),
        ({"size": 8}, "unlabeled_phantom.size must be an integer >= 16, got 8"),
        ({"colour": 1}, "unlabeled_phantom: unknown field(s) ['colour']"),
    ],
)
def test_a_bad_second_phantom_is_refused_naming_the_field(changes, message):
    with pytest.raises((ValueError, TypeError), match=re.escape(message)):
        make_dm(unlabeled_layout="phantom", unlabeled_phantom=changes)


def test_an_image_folder_keeps_its_own_normalisation_and_gives_its_evaluation_split(
    target_folder,
):
    second = folder_source(target_folder, settings=SourceSettings(normalization="zscore"))
    dm = make_dm(unlabeled_source=second, eval_source="second", unlabeled_pool="second")
    assert dm.unlabeled_source is second and second.in_channels == 1
    dm.setup("fit")
    dm.setup("test")
    for volume in dm.unlabeled_dataset.volumes:  # z-scored: mean 0, std 1
        assert abs(float(np.mean(volume.image))) < 1e-3
        assert float(np.std(volume.image)) == pytest.approx(1.0, abs=1e-3)
    for volume in dm.labeled_dataset.volumes:  # the phantom's own min-max
        assert float(np.min(volume.image)) == 0.0 and float(np.max(volume.image)) == 1.0
    split = dm.resolve_unlabeled_split()
    assert split.unlabeled == ["img_000", "img_001", "img_002", "img_003"]
    assert len(split.val) == 1 and len(split.test) == 2
    assert dm.test_dataset.case_ids() == split.test
    assert [v.label is not None for v in dm.val_dataset.volumes] == [True]


def test_a_second_source_with_no_images_is_refused_naming_the_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images")
    with pytest.raises(DataValidationError) as err:
        make_dm(unlabeled_layout="images", unlabeled_root=str(empty))
    message = str(err.value)
    assert "\n" not in message
    assert f"{empty / '.'}: found no NIfTI images (0 of 1 file(s)" in message


def test_a_second_source_with_another_channel_count_is_refused_naming_both(tmp_path):
    root = write_tiny_image_folder(tmp_path / "two", num_images=2, num_eval=0, channels=2)
    second = ImageFolderSource(str(root), images="images")
    with pytest.raises(DataValidationError) as err:
        make_dm(unlabeled_source=second)
    message = str(err.value)
    assert "\n" not in message
    assert message == (
        f"unlabeled source {root} has 2 image channel(s), but the main source "
        "phantom(cases=6, slices=3, size=32, seed=0) has 1; expected the same channels in "
        "both sources."
    )


def test_a_second_source_with_another_class_count_is_refused_naming_both(tmp_path):
    root = write_tiny_nifti(tmp_path / "nifti", num_labeled=2, num_unlabeled=1, num_test=1)
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "heart": 1}
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataValidationError) as err:
        make_dm(unlabeled_layout="nifti", unlabeled_root=str(root))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"unlabeled source {root}: {root / 'dataset.json'}: 2 labels")
    assert "num_classes=4" in message
    assert "The main source phantom(cases=6, slices=3, size=32, seed=0) has 4 classes" in message


def test_labeled_cases_of_the_unlabeled_source_are_refused_naming_it(target_folder):
    dm = make_dm(unlabeled_source=folder_source(target_folder), labeled_cases=["img_001"])
    with pytest.raises(DataValidationError) as err:
        dm.setup("fit")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(
        f"labeled case(s) ['img_001'] are in the unlabeled source {target_folder}, which is "
        "declared unlabeled"
    )


def test_a_missing_test_split_of_the_second_source_is_refused_when_asked_for(target_folder):
    second = ImageFolderSource(str(target_folder), images="images")  # no evaluation folder
    dm = make_dm(unlabeled_source=second, eval_source="second")
    with pytest.raises(DataValidationError) as err:
        dm.setup("test")
    message = str(err.value)
    assert "\n" not in message
    assert message == (
        f"{target_folder}: the test set is empty (eval_source='second'); expected an "
        "evaluation folder (eval_images, eval_labels)."
    )
    # the main source's test split stays the default
    make_dm(unlabeled_source=ImageFolderSource(str(target_folder), images="images")).setup("test")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"unlabeled_pool": "both"},
            "unlabeled_pool='both' and eval_source='main' choose between two sources, but no "
            "second source was given",
        ),
        ({"eval_source": "target"}, "eval_source must be one of ('main', 'second'), got 'target'"),
        (
            {"unlabeled_root": "/data/mri"},
            "unlabeled_root given without unlabeled_layout",
        ),
        (
            {"unlabeled_layout": "nifti"},
            "unlabeled_root is required for unlabeled_layout='nifti', got None",
        ),
        (
            {"unlabeled_source": PhantomSource(PHANTOM), "unlabeled_layout": "phantom"},
            "unlabeled_source=PhantomSource(...) was given together with unlabeled_layout",
        ),
    ],
)
def test_second_source_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make_dm(**kwargs)


def test_two_ranks_share_the_second_sources_pool_without_duplicates():
    from types import SimpleNamespace

    from advmim_lightning.data import AugmentationSettings

    pairs: list[tuple[int, int]] = []
    for rank in range(2):
        dm = make_dm(
            unlabeled_layout="phantom",
            unlabeled_batch_size=2,
            augmentation=AugmentationSettings(enabled=False),
        )
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2, current_epoch=0)
        loader = dm.train_dataloader()
        size = len(dm.unlabeled_dataset)
        assert len(loader) == -(-size // 4)  # one pass over the second source's pool
        for _, streams in loader.sampler:
            pairs += list(streams[1])
        dm.trainer = None
    positions = sorted(g for _, g in pairs)
    assert positions == list(range(len(positions)))  # each position once, over both ranks
    first_pass = [i for i, g in pairs if g < size]
    assert sorted(first_pass) == list(range(size))  # every unlabeled slice once per pass


def test_the_images_layout_reads_the_root_folder_itself(target_folder):
    dm = make_dm(
        unlabeled_layout="images",
        unlabeled_root=str(target_folder / "images"),
        unlabeled_settings={"normalization": "zscore"},
    )
    assert isinstance(dm.unlabeled_source, ImageFolderSource)
    assert dm.unlabeled_source.settings.normalization == "zscore"
    assert dm.hparams["unlabeled_settings"]["normalization"] == "zscore"
    dm.setup("fit")
    assert [v.case_id for v in dm.unlabeled_dataset.volumes] == [f"img_00{i}" for i in range(4)]


def test_image_folder_arguments_and_missing_files_are_named(target_folder, tmp_path):
    with pytest.raises(ValueError, match="eval_images and eval_labels go together"):
        ImageFolderSource(str(target_folder), eval_images="imagesVal")
    with pytest.raises(DataValidationError, match=re.escape(f"{target_folder / 'MRI_image'}: not")):
        make_dm(unlabeled_source=ImageFolderSource(str(target_folder), images="MRI_image"))
    # an evaluation image without its label: named when the split is read
    root = write_tiny_image_folder(tmp_path / "partial", num_images=1, num_eval=2)
    (root / "labelsVal" / "img_001.nii.gz").unlink()
    dm = make_dm(unlabeled_source=folder_source(root), eval_source="second")
    with pytest.raises(DataValidationError) as err:
        dm.setup("test")
    missing = root / "labelsVal" / "img_001.nii.gz"
    assert str(err.value).startswith(f"Missing label file {missing} for test case 'img_001'")
