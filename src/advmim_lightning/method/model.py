"""``AdvMIMModel``: the AdvMIM method (and the CTCT / supervised baselines) as a plain torch model.

No Lightning here. The model owns the two segmenters, AdvMIM's two discriminators, the
masked domain and the settings (:class:`~advmim_lightning.method.config.MethodSettings`).
One call, :meth:`AdvMIMModel.iteration_losses`, computes every loss term of a training
iteration for a batch, given its masks and its cross-teaching weight; what follows (the two
backward passes, clipping, the optimiser steps, the schedules) belongs to whoever trains it:
:class:`~advmim_lightning.method.lightning_module.AdvMIMModule`, or a hand-written loop
(``docs/python-api.md``):

    model = AdvMIMModel(build_settings(method="advmim", image_size=(64, 64)))
    optimizers = [torch.optim.SGD(p.parameters(), lr=0.05) for p in model.trained_parts]
    for x_l, y, x_u in batches:
        losses = model.iteration_losses(x_l, y, x_u, model.draw_masks(x_l, x_u), ct_weight=0.1)
        for opt in optimizers:
            opt.zero_grad()
        losses.segmenter_total.backward()
        losses.discriminator_total.backward()
        for opt in optimizers:
            opt.step()
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advmim_lightning.evaluation import inference
from advmim_lightning.method import contracts, objective
from advmim_lightning.method.config import NETWORK_NAMES, MethodSettings, build_settings
from advmim_lightning.networks import Discriminator, SwinUNet, UNet, random_block_mask, specs

__all__ = ["AdvMIMModel", "IterationLosses"]


@dataclass
class IterationLosses:
    """The loss terms of one training iteration.

    Attributes:
        terms: Every unweighted term by name (``sup_ce_cnn``, ..., ``disc_transformer``).
        segmenter_total: The segmenters' weighted total (backpropagate it into both).
        discriminator_total: ``discriminator_weight`` x the discriminators' terms on detached
            maps (AdvMIM), else None. It reaches no segmenter weight.
    """

    terms: dict[str, Tensor]
    segmenter_total: Tensor
    discriminator_total: Tensor | None


class AdvMIMModel(nn.Module):
    """Two segmenters taught by cross teaching, AdvMIM's masked domain and adversarial loss.

    Args:
        settings: The run's settings (:func:`~advmim_lightning.method.config.build_settings`);
            default: AdvMIM with the public code's defaults.
        cnn: The CNN segmenter (default :class:`~advmim_lightning.networks.UNet`), or a
            stored ``{"class_path", "init_args"}`` spec of an ``advmim_lightning`` class.
        transformer: The transformer segmenter (default
            :class:`~advmim_lightning.networks.SwinUNet` at ``settings.image_size``), or a spec.

    Both segmenters meet the segmenter contract (``docs/python-api.md``): ``net(x)`` returns
    ``B x num_classes x H x W`` logits and, for AdvMIM, ``net(x, mask=m)`` the pair
    ``(logits, masked_logits)``. The sizes they state (``num_classes``, ``in_channels``,
    ``img_size``) and AdvMIM's ``mask`` argument are checked here.

    Raises:
        ValueError: For networks built for other sizes, or one network in both slots.
        TypeError: For an AdvMIM segmenter whose ``forward`` takes no ``mask``.
    """

    def __init__(
        self,
        settings: MethodSettings | None = None,
        cnn: nn.Module | Mapping[str, Any] | None = None,
        transformer: nn.Module | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings if settings is not None else build_settings()
        s = self.settings
        sizes = {"in_channels": s.in_channels, "num_classes": s.num_classes}
        self.cnn = specs.build_network(cnn, UNet, **sizes)
        self.transformer = specs.build_network(
            transformer, SwinUNet, img_size=s.image_size, **sizes
        )
        for name, net in self.segmenters.items():
            contracts.check_network(name, net, s.num_classes, s.in_channels, s.image_size)
            if s.uses_masking:
                contracts.check_takes_a_mask(name, net)
        if self.cnn is self.transformer:
            raise ValueError(
                f"cnn and transformer are the same {type(self.cnn).__name__} instance; each "
                "segmenter needs its own network (its own weights and optimiser): build two"
            )
        if s.uses_masking:
            self.disc_cnn = Discriminator(s.num_classes, s.discriminator_base_channels)
            self.disc_transformer = Discriminator(s.num_classes, s.discriminator_base_channels)
        else:
            self._freeze_unused_mask_tokens()

    # ------------------------------------------------------------------ settings
    def settings_record(self) -> dict[str, Any]:
        """The settings as plain values and both segmenters' specs (what checkpoints keep)."""
        specs_ = {
            name: specs.network_spec(self.segmenters[name]) for name in ("cnn", "transformer")
        }
        return {**self.settings.hparams(), **specs_}

    def edit_settings(self, changes: Mapping[str, Any]) -> None:
        """Apply ``changes`` to the settings (checked as ``MethodSettings.replace`` checks).

        Raises:
            ValueError: For a structural setting, an unknown name, a value the checks refuse,
                or a network spec (the built networks cannot be edited).
        """
        changes = dict(changes)
        for name, spec in self.settings_record().items():
            if name in ("cnn", "transformer") and name in changes and changes.pop(name) != spec:
                raise ValueError(
                    f"hparams.{name} describes the {name} network that was built; it cannot be "
                    f"edited: pass another network, AdvMIMModule({name}=...)"
                )
        self.settings = self.settings.replace(**changes)

    # ------------------------------------------------------------------ parts
    @property
    def segmenters(self) -> dict[str, nn.Module]:
        """The two segmenters by name, in the order every loop over them runs."""
        return {"transformer": self.transformer, "cnn": self.cnn}

    @property
    def discriminators(self) -> dict[str, nn.Module]:
        """AdvMIM's discriminators by the name of the segmenter they judge (empty otherwise)."""
        if not self.settings.uses_masking:
            return {}
        return {"transformer": self.disc_transformer, "cnn": self.disc_cnn}

    @property
    def trained_part_names(self) -> list[str]:
        """Names of :attr:`trained_parts`, in the same order."""
        return [*NETWORK_NAMES, *(f"disc_{name}" for name in self.discriminators)]

    @property
    def named_trained_parts(self) -> dict[str, nn.Module]:
        """:attr:`trained_parts` by :attr:`trained_part_names`."""
        return dict(zip(self.trained_part_names, self.trained_parts, strict=True))

    @property
    def trained_parts(self) -> list[nn.Module]:
        """The networks with an optimiser each: segmenters, then discriminators (AdvMIM)."""
        return [*self.segmenters.values(), *self.discriminators.values()]

    def _freeze_unused_mask_tokens(self) -> None:
        """Baselines never run the masked stream: keep its tokens out of training (and DDP)."""
        for net in self.segmenters.values():
            for name, param in net.named_parameters():
                if name.split(".")[-1] == "mask_token":
                    param.requires_grad_(False)

    def apply_speed_options(self, compile_now: bool) -> None:
        """Channels-last weights (``channels_last``) and, where ``compile_now``,
        ``torch.compile`` of every trained part in place (``compile_networks``)."""
        s = self.settings
        if s.channels_last:
            for part in self.trained_parts:
                part.to(memory_format=torch.channels_last)
        if compile_now and s.compile_networks is not None:
            for part in self.trained_parts:
                part.compile(mode=s.compile_networks)
                if hasattr(part, "forward_streams"):  # the batched training call, too
                    part.forward_streams = torch.compile(
                        part.forward_streams, mode=s.compile_networks
                    )

    # ------------------------------------------------------------------ training
    def forward_batches(self, x_l: Tensor, x_u: Tensor | None) -> list[Tensor]:
        """The batches each segmenter is called on, in order (``forward_batching``)."""
        return objective.forward_batches(x_l, x_u, self.settings.forward_batching)

    def draw_masks(
        self, x_l: Tensor, x_u: Tensor | None, generator: torch.Generator | None = None
    ) -> list[Tensor]:
        """The masked domain's masks of one iteration, one per segmenter call, in call order.

        Every forward batch gets one ``B x H x W`` bool mask per segmenter (transformer
        first), drawn on the images' device; empty for the baselines.

        Args:
            x_l, x_u: The iteration's labeled and unlabeled images.
            generator: The generator to draw from (on that device); torch's default if None.
        """
        if not self.settings.uses_masking:
            return []
        s = self.settings
        return [
            random_block_mask(
                x.shape[0],
                s.image_size,
                block_size=s.mask_block_size,
                ratio=s.mask_ratio,
                generator=generator,
                device=x.device,
            )
            for x in self.forward_batches(x_l, x_u)
            for _ in NETWORK_NAMES
        ]

    def segmenter_outputs(
        self,
        x_l: Tensor,
        y: Tensor,
        x_u: Tensor | None,
        masks: Sequence[Tensor],
        ct_weight: float | Tensor = 0.0,
    ) -> objective.SegmenterOutputs:
        """Both segmenters' forward passes and every segmenter loss term (no discriminator
        update): :func:`~advmim_lightning.method.objective.segmenter_losses`' outputs."""
        s = self.settings
        logits, masked_logits = objective.segmenter_forward(
            self.segmenters,
            self.forward_batches(x_l, x_u),
            masks,
            s.uses_masking,
            batched=s.stream_batching == "batched",
        )
        return objective.segmenter_losses(
            logits,
            masked_logits,
            y,
            x_l.shape[0],
            unlabeled=x_u is not None,
            settings=s.loss_weights(),
            ct_weight=ct_weight,
            loss_variant=s.loss_variant,
            discriminators=self.discriminators or None,
        )

    def iteration_losses(
        self,
        x_l: Tensor,
        y: Tensor,
        x_u: Tensor | None,
        masks: Sequence[Tensor],
        ct_weight: float | Tensor = 0.0,
    ) -> IterationLosses:
        """Every loss term of one training iteration.

        Args:
            x_l: ``B_l x C x H x W`` labeled images; ``y`` their ``B_l x H x W`` int64 labels.
            x_u: ``B_u x C x H x W`` unlabeled images (None for the supervised baseline).
            masks: :meth:`draw_masks`' masks for these images (empty for the baselines).
            ct_weight: The iteration's cross-teaching weight (a number or a 0-d tensor; CTCT
                ramps it, see :func:`~advmim_lightning.method.schedules.ctct_consistency_weight`).

        Returns:
            The terms, the segmenters' total and the discriminators' total.
        """
        out = self.segmenter_outputs(x_l, y, x_u, masks, ct_weight)
        terms = dict(out.terms)
        segmenter_total = torch.stack(list(out.weighted.values())).sum()
        discriminator_total = None
        if self.settings.uses_masking:
            disc_terms = objective.discriminator_losses(
                out,
                self.discriminators,
                self.settings.discriminator_real,
                batched=self.settings.stream_batching == "batched",
            )
            discriminator_total = self.settings.discriminator_weight * sum(disc_terms.values())
            terms.update(disc_terms)
        return IterationLosses(terms, segmenter_total, discriminator_total)

    # ------------------------------------------------------------------ inference
    def probabilities(self, x: Tensor) -> dict[str, Tensor]:
        """Softmax of each segmenter (and their mean, ``"ensemble"``) for ``B x C x H x W``."""
        return inference.probabilities(self.segmenters, x)

    def forward(self, x: Tensor) -> Tensor:
        """``B x num_classes x H x W`` probabilities of ``settings.eval_network`` for ``x``."""
        return self.probabilities(x)[self.settings.eval_network]

    @torch.no_grad()
    def predict_volume(self, image: Tensor) -> dict[str, Tensor]:
        """Label volumes of a whole ``C x D x H x W`` case, predicted slice by slice.

        Slices go to ``image_size`` (``eval_interpolation``) in chunks of
        ``eval_slice_batch`` and the predictions back to the slice size, as
        :func:`advmim_lightning.evaluation.inference.predict_volume` describes.

        Returns:
            ``{"transformer", "cnn", "ensemble"}`` -> ``D x H x W`` int64 label volumes.
        """
        s = self.settings
        return inference.predict_volume(
            self.segmenters, image, s.image_size, s.eval_slice_batch, s.eval_interpolation
        )
