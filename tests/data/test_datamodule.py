"""The data module on the phantom: batches, evaluation items, determinism, resume, sharding."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from advmim_lightning.data import (
    AdvMIMDataModule,
    AugmentationSettings,
    DataValidationError,
    LoaderSettings,
    PhantomSettings,
    PhantomSource,
    SourceSettings,
)


def fingerprint(batch) -> list[torch.Tensor]:
    out = [batch["labeled"]["image"], batch["labeled"]["label"]]
    if "unlabeled" in batch:
        out.append(batch["unlabeled"]["image"])
    return out


def batches(dm: AdvMIMDataModule, count: int | None = None) -> list[list[torch.Tensor]]:
    loader = dm.train_dataloader()
    out = []
    for i, b in enumerate(loader):
        if count is not None and i == count:
            break
        out.append(fingerprint(b))
    return out


def same(a, b) -> bool:
    return len(a) == len(b) and all(
        len(x) == len(y) and all(torch.equal(s, t) for s, t in zip(x, y, strict=True))
        for x, y in zip(a, b, strict=True)
    )


def test_phantom_end_to_end(make_phantom_dm) -> None:
    dm = make_phantom_dm()
    assert dm.class_names == ["background", "RV", "Myo", "LV"]
    assert (dm.in_channels, dm.num_classes, dm.layout) == (1, 4, "phantom")
    assert dm.hparams["phantom"]["cases"] == 6 and dm.hparams["labeled_batch_size"] == 2
    assert dm.hparams["settings"]["val_fraction"] == 0.1  # plain values in the checkpoint
    assert dm.hparams_initial["phantom"] == {  # and for the loggers
        "cases": 6,
        "slices": 3,
        "size": 32,
        "seed": 0,
        "heart_scale": 1.0,
        "domain": "source",
        "domain_strength": 1.0,
    }
    dm.setup("fit")
    assert len(dm.labeled_dataset) == 9 and len(dm.unlabeled_dataset) == 3
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, DistributedSampler)  # Lightning will not re-wrap it
    assert len(loader) == 2  # ceil(3 unlabeled slices / batch 2)
    batch = next(iter(loader))
    assert batch["labeled"]["image"].shape == (2, 1, 32, 32)
    assert batch["labeled"]["image"].dtype == torch.float32
    assert batch["labeled"]["label"].dtype == torch.int64
    assert batch["labeled"]["label"].min() >= 0 and batch["labeled"]["label"].max() < 4
    assert batch["unlabeled"]["image"].shape == (2, 1, 32, 32)
    assert set(batch["unlabeled"]) == {"image", "case_id"}
    assert set(batch["labeled"]["case_id"]) <= set(dm.case_split.labeled)
    item = next(iter(dm.val_dataloader()))
    case = item["case_id"]
    assert item["source"] == f"phantom:{case}" and item["slice_axis"] == 2
    s_slice, s_in, _ = item["spacing"]
    assert 5.0 <= s_slice <= 10.0 and 1.3 <= s_in <= 1.8 and item["spacing"][2] == s_in
    np.testing.assert_allclose(item["affine"].numpy(), np.diag([s_in, s_in, s_slice, 1.0]))
    assert item["image"].shape == (1, 3, 32, 32) and item["label"].shape == (3, 32, 32)
    dm.setup("test")
    dm.setup("predict")
    assert dm.predict_dataset.case_ids() == dm.test_dataset.case_ids() == dm.case_split.test


def test_the_short_form_builds_the_source_a_source_object_gives(make_phantom_dm) -> None:
    settings = SourceSettings(val_fraction=0.2)
    short = make_phantom_dm(seed=2, labeled_cases=2, settings=settings)
    source = PhantomSource(PhantomSettings(cases=6, slices=3, size=32), settings)
    settings = {k: short.hparams[k] for k in ("image_size", "num_workers", "labeled_batch_size")}
    given = AdvMIMDataModule(
        source=source, seed=2, labeled_cases=2, unlabeled_batch_size=2, **settings
    )
    assert type(short.source) is PhantomSource and vars(short.source).keys() == vars(source).keys()
    assert same(batches(short, 3), batches(given, 3))
    short.setup("test")
    given.setup("test")
    assert short.case_split == given.case_split
    assert torch.equal(short.test_dataset[0]["image"], given.test_dataset[0]["image"])


def test_determinism_by_seed(make_phantom_dm) -> None:
    a = batches(make_phantom_dm(seed=3), 2)
    assert same(a, batches(make_phantom_dm(seed=3), 2))
    assert not same(a, batches(make_phantom_dm(seed=4), 2))


def test_same_batches_with_workers(make_phantom_dm) -> None:
    reference = batches(make_phantom_dm(iterations_per_epoch=3))
    with_workers = batches(make_phantom_dm(iterations_per_epoch=3, num_workers=2))
    assert same(reference, with_workers)


def test_resume_from_an_iteration_gives_the_same_batches(make_phantom_dm) -> None:
    dm = make_phantom_dm(iterations_per_epoch=3)
    dm.setup("fit")
    full = []
    loader = dm.train_dataloader()
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        full += [fingerprint(b) for b in loader]
    resumed = make_phantom_dm(iterations_per_epoch=3)
    resumed.load_state_dict({"next_iteration": 4, "seed": 0})
    assert same(batches(resumed), full[4:])  # the rest of epoch 1


def test_iteration_tracking_and_state_dict(make_phantom_dm) -> None:
    dm = make_phantom_dm(iterations_per_epoch=3)
    assert dm.state_dict()["next_iteration"] == 0
    loader = dm.train_dataloader()
    batch = next(iter(loader))
    assert batch["iteration"] == 0
    batch = dm.on_before_batch_transfer(batch, 0)
    assert "iteration" not in batch and dm.next_iteration == 1
    state = dm.state_dict()
    assert state["next_iteration"] == 1 and state["iterations_per_epoch"] == 3
    assert all(isinstance(v, int | type(None)) for v in state.values())  # weights_only-safe
    other = make_phantom_dm(iterations_per_epoch=3, seed=5)
    with pytest.warns(UserWarning, match="changed settings \\(seed: 0 -> 5\\)"):
        other.load_state_dict(state)
    assert other.start_iteration == 1
    other.set_start_iteration(2)
    assert next(iter(other.train_dataloader()))["iteration"] == 2
    with pytest.raises(ValueError, match="start_iteration must be an integer >= 0"):
        other.start_iteration = -1


def test_two_ranks_share_the_streams_without_duplicates(make_phantom_dm) -> None:
    seen: dict[int, list[tuple[int, int]]] = {0: [], 1: []}
    sizes = {}
    for rank in range(2):
        dm = make_phantom_dm(
            phantom=PhantomSettings(cases=10, slices=3, size=32),
            labeled_cases=2,
            augmentation=AugmentationSettings(enabled=False),
        )
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2, current_epoch=0)
        loader = dm.train_dataloader()
        sizes = {0: len(dm.labeled_dataset), 1: len(dm.unlabeled_dataset)}
        assert (loader.sampler.rank, loader.sampler.num_replicas) == (rank, 2)
        assert len(loader) == 4  # ceil(15 unlabeled slices / (2 ranks x 2))
        for _, streams in loader.sampler:
            for stream, pairs in enumerate(streams):
                seen[stream] += list(pairs)
        batch = next(iter(loader))  # the batch really holds the planned slices
        assert batch["labeled"]["image"].shape == (2, 1, 32, 32)
        dm.trainer = None
    assert sizes == {0: 6, 1: 15}
    for stream, pairs in seen.items():
        positions = sorted(g for _, g in pairs)
        assert positions == list(range(16))  # 4 iterations x 2 ranks x 2: each position once
        n = sizes[stream]
        for p in range(16 // n + 1):  # within a pass, no slice is read twice
            indices = [i for i, g in pairs if g // n == p]
            assert len(indices) == len(set(indices))
            if (p + 1) * n <= 16:
                assert sorted(indices) == list(range(n))


def test_default_epoch_length_without_unlabeled_stream(make_phantom_dm) -> None:
    dm = make_phantom_dm(labeled_cases=4, require_unlabeled=False)
    dm.setup("fit")
    assert dm.unlabeled_dataset is None
    assert dm.resolved_iterations_per_epoch() == 6  # 12 labeled slices / batch 2
    assert dm.resolved_iterations_per_epoch(world_size=2) == 3
    assert "unlabeled" not in next(iter(dm.train_dataloader()))


def test_phantom_errors(make_phantom_dm) -> None:
    with pytest.raises(
        DataValidationError,
        match=r"phantom: the phantom has 4 classes \[.*\], but num_classes=3; expected "
        r"num_classes=4\.",
    ):
        make_phantom_dm(num_classes=3)
    with pytest.raises(DataValidationError, match="unlabeled pool is empty"):
        make_phantom_dm(labeled_cases=4).setup("fit")
    with pytest.raises(
        DataValidationError, match=r"the test set is empty; expected test_fraction > 0"
    ):
        make_phantom_dm(settings=SourceSettings(test_fraction=0.0)).setup("test")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"layout": "dicom"}, "layout must be one of"),
        ({"num_classes": 1}, "num_classes must be >= 2"),
        ({"labeled_cases": 0}, "labeled_cases must be >= 1"),
        ({"labeled_cases": ["a", "a"]}, "labeled_cases lists a case twice"),
        ({"labeled_batch_size": 0}, "labeled_batch_size must be an integer >= 1, got 0"),
        ({"image_size": (32,)}, "image_size must be two integers"),
        ({"num_workers": -1}, "num_workers must be an integer >= 0"),
        ({"iterations_per_epoch": 0}, "iterations_per_epoch must be >= 1"),
    ],
)
def test_argument_checks(kwargs, message: str, make_phantom_dm) -> None:
    with pytest.raises(ValueError, match=message):
        make_phantom_dm(**kwargs)


@pytest.mark.parametrize(
    "settings,fields,message",
    [
        (SourceSettings, {"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\), got 1.0"),
        (SourceSettings, {"normalization": "robust"}, "normalization must be one of"),
        (SourceSettings, {"case_pattern": "("}, "not a valid regular expression"),
        (SourceSettings, {"slice_axis": 3}, "slice_axis must be 0, 1, 2 or None, got 3"),
        (SourceSettings, {"window_width": 0}, "window_width must be > 0, got 0"),
        (AugmentationSettings, {"image_interpolation": "cubic"}, "image_interpolation must be"),
        (
            AugmentationSettings,
            {"rotate_probability": 2.0},
            r"rotate_probability must be in \[0, 1\]",
        ),
        (PhantomSettings, {"size": 8}, "phantom.size must be an integer >= 16, got 8"),
        (PhantomSettings, {"cases": 0}, "phantom.cases must be an integer >= 1, got 0"),
        (
            PhantomSettings,
            {"heart_scale": 1.7},
            r"phantom.heart_scale must be in \[0.5, 1.6\], got 1.7",
        ),
        (LoaderSettings, {"eval_num_workers": -1}, "eval_num_workers must be an integer >= 0"),
    ],
)
def test_settings_are_checked_once_where_declared(settings, fields, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        settings(**fields)


def test_settings_may_be_mappings_of_their_fields(make_phantom_dm) -> None:
    dm = make_phantom_dm(settings={"val_fraction": 0.2}, phantom=dict(cases=6, slices=3, size=32))
    assert dm.source.settings == SourceSettings(val_fraction=0.2)
    again = AdvMIMDataModule(**dm.hparams)  # as load_from_checkpoint rebuilds it
    assert again.source.settings == dm.source.settings and again.source.phantom.cases == 6
    with pytest.raises(TypeError, match=r"settings must be a SourceSettings .* got int"):
        make_phantom_dm(settings=3)
    with pytest.raises(TypeError, match=r"phantom: unknown field\(s\) \['num_cases'\]"):
        make_phantom_dm(phantom={"num_cases": 6})


def test_resuming_training_on_another_world_size_is_refused_but_evaluation_is_not(
    make_phantom_dm,
) -> None:
    saved = {"next_iteration": 3, "seed": 0, "world_size": 2}
    for fn in ("validate", "test", "predict"):  # evaluation reads no training batches
        dm = make_phantom_dm()
        dm.trainer = SimpleNamespace(global_rank=0, world_size=1, state=SimpleNamespace(fn=fn))
        dm.load_state_dict(saved)
    dm = make_phantom_dm()
    dm.trainer = SimpleNamespace(global_rank=0, world_size=1, state=SimpleNamespace(fn="fit"))
    with pytest.raises(ValueError, match=r"saved by a run with 2 process\(es\) and this run has 1"):
        dm.load_state_dict(saved)
    dm.load_state_dict({**saved, "world_size": 1})
    assert dm.start_iteration == 3
