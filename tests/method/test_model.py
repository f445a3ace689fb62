"""``AdvMIMModel``: the method as plain torch, tested on tiny tensors without Lightning."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from advmim_lightning.method.config import build_settings
from advmim_lightning.method.model import AdvMIMModel
from advmim_lightning.method.randomness import IterationRandomness
from tiny import TINY_SIZE, tiny_batch, tiny_swin, tiny_unet


def tiny_model(method: str = "advmim", **settings) -> AdvMIMModel:
    settings = build_settings(method=method, image_size=(TINY_SIZE, TINY_SIZE), **settings)
    return AdvMIMModel(settings, cnn=tiny_unet(), transformer=tiny_swin())


def inputs(seed: int = 0):
    batch = tiny_batch(seed=seed)
    return batch["labeled"]["image"], batch["labeled"]["label"], batch["unlabeled"]["image"]


def test_a_hand_written_loop_trains_the_model():
    torch.manual_seed(0)
    model = tiny_model("advmim")
    optimizers = [torch.optim.SGD(p.parameters(), lr=0.05) for p in model.trained_parts]
    x_l, y, x_u = inputs()
    first = None
    for _ in range(4):
        losses = model.iteration_losses(x_l, y, x_u, model.draw_masks(x_l, x_u), ct_weight=0.1)
        for opt in optimizers:
            opt.zero_grad()
        losses.segmenter_total.backward()
        losses.discriminator_total.backward()
        for opt in optimizers:
            opt.step()
        first = first if first is not None else losses.segmenter_total.item()
    assert losses.segmenter_total.item() < first
    model.eval()
    labels = model.predict_volume(torch.rand(1, 3, 40, 48))
    assert {k: tuple(v.shape) for k, v in labels.items()} == {
        "transformer": (3, 40, 48),
        "cnn": (3, 40, 48),
        "ensemble": (3, 40, 48),
    }


def test_the_model_module_imports_no_lightning():
    code = (
        "import sys, advmim_lightning.method.model as m; "
        "assert 'lightning' not in sys.modules and 'lightning.pytorch' not in sys.modules, "
        "sorted(k for k in sys.modules if k.startswith('lightning'))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_each_method_returns_its_terms_and_totals():
    x_l, y, x_u = inputs()
    model = tiny_model("advmim")
    out = model.iteration_losses(x_l, y, x_u, model.draw_masks(x_l, x_u), 0.1)
    assert out.discriminator_total is not None
    assert {"sup_ce_cnn", "masked_sup_dice_cnn", "adv_transformer", "disc_cnn"} <= set(out.terms)
    assert "masked_sup_dice_transformer" not in out.terms  # public code: the CNN's only
    assert "masked_pseudo_dice_cnn" not in out.terms
    paper = tiny_model("advmim", loss_variant="paper")
    terms = paper.iteration_losses(x_l, y, x_u, paper.draw_masks(x_l, x_u), 0.1).terms
    assert {"masked_sup_dice_transformer", "masked_pseudo_dice_cnn"} <= set(terms)
    ctct = tiny_model("ctct")
    out = ctct.iteration_losses(x_l, y, x_u, ctct.draw_masks(x_l, x_u), 0.1)
    assert out.discriminator_total is None and ctct.draw_masks(x_l, x_u) == []
    assert set(out.terms) == {f"{t}_{n}" for t in ("sup_ce", "sup_dice", "cross_teaching")
                              for n in ("cnn", "transformer")}  # fmt: skip
    supervised = tiny_model("supervised")
    out = supervised.iteration_losses(x_l, y, None, [], 0.0)
    assert set(out.terms) == {
        f"sup_{t}_{n}" for t in ("ce", "dice") for n in ("cnn", "transformer")
    }
    # the total is each weighted term: supervised 0.5 * (CE + Dice) per network
    expected = 0.5 * sum(out.terms.values())
    torch.testing.assert_close(out.segmenter_total, expected)


def test_the_discriminator_total_reaches_only_the_discriminators_and_the_segmenters_only_theirs():
    torch.manual_seed(0)
    model = tiny_model("advmim")
    x_l, y, x_u = inputs()
    out = model.iteration_losses(x_l, y, x_u, model.draw_masks(x_l, x_u), 0.1)
    out.segmenter_total.backward(retain_graph=True)
    # the generator term flows through the discriminators but leaves them no gradient
    assert all(p.grad is None for d in model.discriminators.values() for p in d.parameters())
    assert any(p.grad is not None for p in model.cnn.parameters())
    model.zero_grad(set_to_none=True)
    out.discriminator_total.backward()
    assert all(p.grad is None for s in model.segmenters.values() for p in s.parameters())
    assert all(p.grad is not None for p in model.disc_cnn.parameters())


def test_pseudo_labels_carry_no_gradient_to_the_other_network():
    torch.manual_seed(0)
    model = tiny_model("ctct")
    x_l, y, x_u = inputs()
    terms = model.iteration_losses(x_l, y, x_u, [], ct_weight=0.1).terms
    terms["cross_teaching_cnn"].backward()
    assert all(p.grad is None for p in model.transformer.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.cnn.parameters())


def test_masks_are_keyed_by_seed_rank_and_iteration():
    model = tiny_model("advmim")
    x_l, _, x_u = inputs()
    randomness = IterationRandomness(rng_seed=0)
    device = torch.device("cpu")
    first = model.draw_masks(x_l, x_u, randomness.mask_generator(device, 0, 0))
    assert len(first) == 4  # separate batches: (labeled, unlabeled) x (transformer, cnn)
    assert first[0].shape == (2, TINY_SIZE, TINY_SIZE) and first[0].dtype == torch.bool
    assert not torch.equal(first[0], first[1])  # each call its own mask
    later = model.draw_masks(x_l, x_u, randomness.mask_generator(device, 0, 7))
    again = IterationRandomness(rng_seed=0)  # a resumed run: no saved generator state
    assert all(
        map(torch.equal, later, model.draw_masks(x_l, x_u, again.mask_generator(device, 0, 7)))
    )
    other_rank = model.draw_masks(x_l, x_u, again.mask_generator(device, 1, 7))
    assert not torch.equal(other_rank[0], later[0])
    other_seed = IterationRandomness(rng_seed=1).mask_generator(device, 0, 0)
    assert not torch.equal(model.draw_masks(x_l, x_u, other_seed)[0], first[0])


def test_one_network_in_both_slots_is_refused():
    net = tiny_unet()
    with pytest.raises(ValueError, match="cnn and transformer are the same UNet instance"):
        AdvMIMModel(build_settings(image_size=(TINY_SIZE, TINY_SIZE)), cnn=net, transformer=net)
