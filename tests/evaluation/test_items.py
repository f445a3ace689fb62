"""Tests for advmim_lightning.evaluation.items: what an evaluation step is given."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from advmim_lightning.evaluation.case_metrics import compute_case_metrics
from advmim_lightning.evaluation.items import (
    UNBATCHED_HINT,
    check_evaluation_item,
    describe_item,
    item_spacing,
)

NUM_CLASSES, IN_CHANNELS = 4, 1


def make_item(index: int = 3, **changes: object) -> dict[str, object]:
    """An EvalItem as VolumeDataset yields it: 1 x 4 x 8 x 8 image, labels 0..3."""
    label = torch.zeros(4, 8, 8, dtype=torch.int64)
    label[1:3, 2:6, 2:6] = 1
    label[1, 0, 0] = 3
    item: dict[str, object] = {
        "image": torch.randn(IN_CHANNELS, 4, 8, 8),
        "label": label,
        "case_id": f"patient{index:03d}_frame01",
        "case_index": index,
        "spacing": (5.0, 1.5, 1.5),
        "spacing_known": True,
    }
    item.update(changes)
    return item


def check(item: object, where: str = "validation"):
    return check_evaluation_item(item, NUM_CLASSES, IN_CHANNELS, where=where)


def test_a_good_item_gives_its_index_and_spacing():
    assert check(make_item()) == (3, (5.0, 1.5, 1.5))
    assert check(make_item(case_index=torch.tensor(7))) == (7, (5.0, 1.5, 1.5))
    assert check(make_item(spacing=torch.tensor([2.0, 1.0, 1.0]))) == (3, (2.0, 1.0, 1.0))
    assert check(make_item(), where="test") == (3, (5.0, 1.5, 1.5))
    assert check(make_item(label=make_item()["label"].to(torch.uint8))) == (3, (5.0, 1.5, 1.5))


def test_spacing_rule_missing_or_unknown_spacing_means_voxels():
    no_spacing = make_item()
    del no_spacing["spacing"], no_spacing["spacing_known"]
    assert check(no_spacing) == (3, None)
    assert check(make_item(spacing_known=False)) == (3, None)
    assert check(make_item(spacing=None)) == (3, None)
    # In voxels: a 2-voxel shift along D gives HD95 2 (not 2 x 5 mm).
    label = torch.zeros(8, 8, 8, dtype=torch.long)
    label[2:6, 2:6, 2:6] = 1
    prediction = label.roll(2, 0)
    _, spacing = check_evaluation_item(
        {"image": torch.zeros(1, 8, 8, 8), "label": label, "case_index": 0}, 2, 1
    )
    assert compute_case_metrics(prediction, label, 2, spacing=spacing)[1, 0].item() == 2.0


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (1.0, -1.0, 1.0), (1.0, float("nan"), 1.0), "a"])
def test_bad_spacing_is_refused_naming_the_item(spacing):
    with pytest.raises(
        ValueError, match=r"case_id 'patient003_frame01', case_index 3\): 'spacing'"
    ):
        check(make_item(spacing=spacing))
    with pytest.raises(ValueError, match="three positive finite numbers"):
        item_spacing(make_item(spacing=spacing))


def test_batch_size_1_loader_items_are_refused_as_batched():
    items = [make_item(0), make_item(1)]
    batched = next(iter(DataLoader(items, batch_size=1)))  # default collate adds a batch dim
    assert batched["image"].shape == (1, 1, 4, 8, 8)
    with pytest.raises(ValueError) as error:
        check(batched)
    message = str(error.value)
    assert "validation item (case_id ['patient000_frame01'], case_index tensor([0]))" in message
    assert "'image' has shape (1, 1, 4, 8, 8), a batch of one C x D x H x W volume" in message
    assert "batch_size=None" in message and UNBATCHED_HINT in message
    # batch_size=None yields the items themselves.
    unbatched = next(iter(DataLoader(items, batch_size=None)))
    assert check(unbatched) == (0, (5.0, 1.5, 1.5))


def test_label_values_outside_the_classes_are_refused():
    label = make_item()["label"].clone()
    label[0, 0, 0] = 4
    with pytest.raises(ValueError) as error:
        check(make_item(label=label))
    message = str(error.value)
    assert "validation item (case_id 'patient003_frame01', case_index 3)" in message
    assert "'label' holds the value 4 (values range over [0, 4])" in message
    assert "expected class indices in [0, 4) for num_classes=4" in message
    label[0, 0, 0] = -1
    with pytest.raises(ValueError, match=r"holds the value -1 \(values range over \[-1, 3\]\)"):
        check(make_item(label=label))


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"image": torch.randn(4, 8, 8)}, ValueError, r"got shape \(4, 8, 8\)\. A D x H x W"),
        ({"image": torch.randn(3, 4, 8, 8)}, ValueError, r"C = in_channels = 1 .* got shape"),
        ({"image": torch.zeros(1, 4, 8, 8, dtype=torch.uint8)}, TypeError, "float tensor"),
        ({"image": [[0.0]]}, TypeError, "'image' must be a C x D x H x W float tensor, got a list"),
        ({"label": torch.zeros(4, 8, 7, dtype=torch.long)}, ValueError, r"of shape \(4, 8, 8\)"),
        ({"label": torch.zeros(4, 8, 8)}, TypeError, "integer class indices, got dtype"),
        ({"label": torch.zeros(4, 8, 8, dtype=torch.bool)}, TypeError, "torch.bool"),
        ({"case_index": 1.0}, ValueError, r"'case_index' must be an int .* got 1\.0 \(float\)"),
        ({"case_index": torch.tensor(1.0)}, ValueError, "0-d integer tensor"),
    ],
)
def test_wrong_values_are_named(changes, error, match):
    with pytest.raises(error, match=match):
        check(make_item(**changes))


def test_missing_keys_are_named_with_what_was_expected():
    for key, match in (
        ("image", "has no 'image'"),
        ("label", "has no 'label' .* D x H x W integer label volume"),
        ("case_index", "has no 'case_index' .* scored once under DDP"),
    ):
        item = make_item()
        del item[key]
        with pytest.raises(ValueError, match=match) as error:
            check(item)
        assert "keys [" in str(error.value)
    no_id = make_item()
    del no_id["case_id"]
    assert check(no_id) == (3, (5.0, 1.5, 1.5))  # validation does not need it
    with pytest.raises(ValueError, match=r"test item \(case_index 3\) has no 'case_id'"):
        check(no_id, where="test")
    no_index = make_item()
    del no_index["case_index"]
    with pytest.raises(ValueError, match="has no 'case_index'"):
        check(no_index)


def test_prediction_items_need_no_label_or_index():
    item = make_item()
    del item["label"], item["case_index"]
    assert check(item, where="prediction") == (None, (5.0, 1.5, 1.5))
    with pytest.raises(ValueError, match="has no 'case_id'"):
        check({"image": torch.zeros(1, 2, 2, 2)}, where="prediction")


def test_not_a_dict_and_bad_where():
    with pytest.raises(TypeError, match=r"test item 5: expected a dict .* got a list of 2"):
        check_evaluation_item([torch.zeros(1), torch.zeros(1)], 4, 1, "test", batch_idx=5)
    with pytest.raises(ValueError, match="where must be"):
        check_evaluation_item(make_item(), 4, 1, where="train")  # type: ignore[arg-type]
    assert describe_item(make_item(), "test", 2) == (
        "test item 2 (case_id 'patient003_frame01', case_index 3)"
    )
    assert describe_item(torch.zeros(3)) == "validation item"
