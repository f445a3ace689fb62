"""The loss terms of one training iteration, per method, as plain torch (no Lightning).

:func:`segmenter_losses` computes every segmenter term of an iteration from the segmenters'
logits (supervised ``CE + Dice``; cross teaching for CTCT and AdvMIM; for AdvMIM the masked
supervised and confidence-weighted pseudo-label terms and the LSGAN generator term), and
:func:`discriminator_losses` the discriminators' LSGAN terms on detached maps.
:func:`segmenter_forward` calls the segmenters the way ``forward_batching`` asks. The weights
and variants are those of ``docs/method.md``; ``AdvMIMModule`` passes its resolved settings.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advmim_lightning.losses import (
    confidence_weighted_cross_entropy,
    cross_entropy_loss,
    dice_loss,
    lsgan_loss,
    weighted_dice_loss,
)
from advmim_lightning.method.config import NETWORK_NAMES
from advmim_lightning.networks.streams import join


@dataclass
class SegmenterOutputs:
    """What the segmenter pass of one iteration leaves for logging and the discriminators.

    Attributes:
        terms: Unweighted loss terms by ``<term>_<network>`` (scalars).
        weighted: The weighted parts whose sum is backpropagated.
        probs: Softmax of each network's original-domain prediction on ``[x_l; x_u]``.
        masked_unlabeled_probs: Softmax of each network's masked-domain prediction on ``x_u``
            (AdvMIM only).
        n_labeled: ``B_l``, where the unlabeled part of ``probs`` starts.
    """

    terms: dict[str, Tensor]
    weighted: dict[str, Tensor]
    probs: dict[str, Tensor]
    masked_unlabeled_probs: dict[str, Tensor]
    n_labeled: int


def forward_batches(x_l: Tensor, x_u: Tensor | None, forward_batching: str | None) -> list[Tensor]:
    """The batches each segmenter is called on, in order.

    Args:
        x_l: ``B_l x C x H x W`` labeled images.
        x_u: ``B_u x C x H x W`` unlabeled images, or None (supervised).
        forward_batching: ``"separate"`` (``[x_l, x_u]``); anything else joins them
            (``[cat(x_l, x_u)]``).
    """
    if x_u is None:
        return [x_l]
    if forward_batching != "separate":
        return [torch.cat([x_l, x_u])]
    return [x_l, x_u]


def segmenter_forward(
    segmenters: Mapping[str, nn.Module],
    batches: Sequence[Tensor],
    masks: Sequence[Tensor],
    masking: bool,
    batched: bool = False,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Each segmenter's logits on the joined batches (and masked-domain logits with masking).

    The calls follow the public AdvMIM code's order: every network on the first batch, then
    every network on the next, each call with the next of ``masks`` when ``masking``. With
    ``batched``, a network that offers ``forward_streams`` (the library's networks) makes all
    its calls in one pass instead, with the same results up to rounding and dropout draws
    (:mod:`advmim_lightning.networks.streams`).

    Args:
        segmenters: The networks by name (``transformer`` first).
        batches: ``B_i x C x H x W`` images, as :func:`forward_batches` returns them.
        masks: ``B_i x H x W`` bool masks, one per call, in call order (unused without
            masking).
        masking: Call ``net(x, mask=m)`` (AdvMIM) instead of ``net(x)``.
        batched: Join each network's calls where it can (``stream_batching="batched"``).

    Returns:
        ``(logits, masked_logits)`` by network name, each ``sum(B_i) x K x H x W``;
        ``masked_logits`` is empty without masking.
    """
    if batched and (masking or len(batches) > 1):
        joined = [name for name, net in segmenters.items() if batches_its_calls(net)]
    else:
        joined = []
    logits: dict[str, Tensor] = {}
    masked_logits: dict[str, Tensor] = {}
    for j, name in enumerate(segmenters):
        if name not in joined:
            continue
        own_masks = list(masks[j :: len(segmenters)]) if masking else None
        out = segmenters[name].forward_streams(list(batches), own_masks)
        if masking:
            logits[name], masked_logits[name] = out
        else:
            logits[name] = out
    if len(joined) == len(segmenters):
        return logits, masked_logits
    next_mask = iter(masks)
    parts: dict[str, list[Tensor]] = {name: [] for name in NETWORK_NAMES}
    masked_parts: dict[str, list[Tensor]] = {name: [] for name in NETWORK_NAMES}
    for x in batches:
        for name, net in segmenters.items():
            mask = next(next_mask) if masking else None
            if name in joined:
                continue
            if masking:
                out, masked = net(x, mask=mask)
                masked_parts[name].append(masked)
            else:
                out = net(x)
            parts[name].append(out)
    for name in segmenters:
        if name not in joined:
            logits[name] = join(parts[name])
            if masked_parts[name]:
                masked_logits[name] = join(masked_parts[name])
    logits = {name: logits[name] for name in segmenters}  # the networks' order, as always
    masked_logits = {name: masked_logits[name] for name in segmenters if name in masked_logits}
    return logits, masked_logits


def batches_its_calls(net: nn.Module) -> bool:
    """Whether ``net`` offers ``forward_streams`` for its own ``forward``: the class that
    defines ``forward`` defines ``forward_streams`` too (a subclass that overrides ``forward``
    alone gets separate calls, so its ``forward`` is what runs)."""

    def owner(name: str) -> type | None:
        return next((c for c in type(net).__mro__ if name in vars(c)), None)

    streams = owner("forward_streams")
    return streams is not None and streams is owner("forward")


def segmenter_losses(
    logits: Mapping[str, Tensor],
    masked_logits: Mapping[str, Tensor],
    y: Tensor,
    n_labeled: int,
    *,
    unlabeled: bool,
    settings: Mapping[str, float],
    ct_weight: float | Tensor,
    loss_variant: str,
    discriminators: Mapping[str, nn.Module] | None,
) -> SegmenterOutputs:
    """Every segmenter loss term of one iteration.

    Args:
        logits: Each network's ``(B_l + B_u) x K x H x W`` logits, labeled images first.
        masked_logits: Each network's masked-domain logits, same shape (AdvMIM; else empty).
        y: ``B_l x H x W`` labels of the labeled images.
        n_labeled: ``B_l``, where the unlabeled images start in the logits.
        unlabeled: Whether the logits include unlabeled images (``B_u > 0``; not supervised).
        settings: The resolved weights (``sup_weight``, ``masked_sup_weight``,
            ``masked_pseudo_weight``, ``adversarial_weight``).
        ct_weight: Cross-teaching weight of this iteration (a number or a 0-d tensor).
        loss_variant: ``"public_code"`` or ``"paper"`` (see ``AdvMIMModule``).
        discriminators: The discriminator of each network (AdvMIM), or None without masking.

    Returns:
        The unweighted terms by ``<term>_<network>``, the weighted parts of the total, and the
        softmax maps the discriminator step reuses (detached there).
    """
    n_l = n_labeled
    probs = {name: out.float().softmax(1) for name, out in logits.items()}

    terms: dict[str, Tensor] = {}
    weighted: dict[str, Tensor] = {}
    masked_unlabeled_probs: dict[str, Tensor] = {}
    for name, other in (("transformer", "cnn"), ("cnn", "transformer")):
        ce = cross_entropy_loss(logits[name][:n_l], y)
        dice = dice_loss(probs[name][:n_l], y)
        terms[f"sup_ce_{name}"], terms[f"sup_dice_{name}"] = ce, dice
        weighted[f"sup_{name}"] = settings["sup_weight"] * (ce + dice)
        if not unlabeled:
            continue

        # Pseudo-labels and confidences of the *other* network, never differentiated.
        with torch.no_grad():
            confidence, pseudo = probs[other][n_l:].detach().max(1)
        ct = dice_loss(probs[name][n_l:], pseudo)
        terms[f"cross_teaching_{name}"] = ct
        weighted[f"cross_teaching_{name}"] = ct_weight * ct
        if discriminators is None:
            continue

        m_logits = masked_logits[name].float()
        m_ce = cross_entropy_loss(m_logits[:n_l], y)
        terms[f"masked_sup_ce_{name}"] = m_ce
        masked_sup = m_ce
        m_probs = m_logits.softmax(1)
        if loss_variant == "paper" or name == "cnn":
            m_dice = dice_loss(m_probs[:n_l], y)
            terms[f"masked_sup_dice_{name}"] = m_dice
            masked_sup = masked_sup + m_dice
        weighted[f"masked_sup_{name}"] = settings["masked_sup_weight"] * masked_sup

        pl_ce = confidence_weighted_cross_entropy(m_logits[n_l:], pseudo, confidence)
        terms[f"masked_pseudo_ce_{name}"] = pl_ce
        masked_pseudo = pl_ce
        if loss_variant == "paper":
            pl_dice = weighted_dice_loss(m_probs[n_l:], pseudo, confidence)
            terms[f"masked_pseudo_dice_{name}"] = pl_dice
            masked_pseudo = masked_pseudo + pl_dice
        weighted[f"masked_pseudo_{name}"] = settings["masked_pseudo_weight"] * masked_pseudo

        masked_unlabeled_probs[name] = m_probs[n_l:]
        disc = discriminators[name]
        with frozen(disc):
            adv = lsgan_loss(judge(disc, m_probs[n_l:]), target_is_real=True)
        terms[f"adv_{name}"] = adv
        weighted[f"adv_{name}"] = settings["adversarial_weight"] * adv
    return SegmenterOutputs(terms, weighted, probs, masked_unlabeled_probs, n_l)


def discriminator_losses(
    out: SegmenterOutputs,
    discriminators: Mapping[str, nn.Module],
    real: str,
    batched: bool = False,
) -> dict[str, Tensor]:
    """LSGAN discriminator terms on detached maps, by ``disc_<network>``.

    Args:
        out: The iteration's :func:`segmenter_losses` result (AdvMIM).
        discriminators: The discriminator of each network.
        real: What is "real" (``discriminator_real``): ``"labeled"`` (the original-domain
            prediction on the labeled images) or ``"unlabeled"`` (on the unlabeled ones);
            "fake" is always the masked-domain prediction on the unlabeled images.
        batched: Judge real and fake maps in one call (``stream_batching="batched"``; the
            discriminator has no batch statistics, so this equals two calls up to rounding).
    """
    n_l, probs, masked_unlabeled_probs = out.n_labeled, out.probs, out.masked_unlabeled_probs
    terms = {}
    for name in NETWORK_NAMES:
        disc = discriminators[name]
        real_probs = (probs[name][:n_l] if real == "labeled" else probs[name][n_l:]).detach()
        fake_probs = masked_unlabeled_probs[name].detach()
        if batched:
            judged = judge(disc, torch.cat([real_probs, fake_probs]))
            real_judged, fake_judged = judged[: real_probs.shape[0]], judged[real_probs.shape[0] :]
        else:
            real_judged, fake_judged = judge(disc, real_probs), judge(disc, fake_probs)
        real_term = lsgan_loss(real_judged, target_is_real=True)
        terms[f"disc_{name}"] = real_term + lsgan_loss(fake_judged, target_is_real=False)
    return terms


def judge(disc: nn.Module, probs: Tensor) -> Tensor:
    """The discriminator's float32 map of ``probs`` (float32 softmax maps), computed in the
    discriminator's own dtype: under ``precision="bf16-true"`` or ``"64-true"`` its weights
    are bf16 / float64, under ``"bf16-mixed"`` and 32 they are float32 (no cast)."""
    weight = next(disc.parameters(), None)
    if weight is not None and weight.dtype != probs.dtype:
        return disc(probs.to(weight.dtype)).float()
    return disc(probs)


@contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Temporarily stop parameter gradients of ``modules`` (activations still backpropagate).

    Used around the discriminator call of the generator's adversarial term: the term flows
    *through* the discriminator into the segmenter, but the discriminator's own parameters
    record no gradient from it (the public code computes and then zeroes those stale
    gradients; not computing them is the same update, cheaper).
    """
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
