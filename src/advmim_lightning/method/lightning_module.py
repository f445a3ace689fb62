"""``AdvMIMModule``: the AdvMIM training algorithm and the CTCT / supervised baselines.

This module only *wires* the parts into Lightning's hooks: the optimiser steps, logging and
the evaluation steps. The method's defaults and argument checks are in
:mod:`advmim_lightning.method.config`, its loss terms in :mod:`~advmim_lightning.method.objective`,
slice-wise inference in :mod:`~advmim_lightning.evaluation.inference`, the logged values and the
prediction records in :mod:`~advmim_lightning.method.records`; networks come from
:mod:`advmim_lightning.networks`, loss functions from :mod:`advmim_lightning.losses`, schedules
from :mod:`advmim_lightning.method.schedules`, 3D metrics from
:mod:`advmim_lightning.evaluation.metrics`, the
checkpoint trust rule from :mod:`advmim_lightning.run.checkpoints`, the checks of networks, batches
and trainers from :mod:`advmim_lightning.method.contracts`, the optimisers from
:mod:`advmim_lightning.method.optim` (``docs/architecture.md`` lists every file). ``docs/method.md``
describes the method, its defaults and where they come from.

The file is longer than the library's other modules (about 900 lines) because
``AdvMIMModule`` is one class: its docstring is the reference of all 39 arguments (about 110
lines, which LightningCLI shows as ``--help``) and it holds every Lightning hook of the run.

One training *iteration* is one paired batch (labeled + unlabeled) and, for AdvMIM, four
optimiser steps (two segmenters, then two discriminators); CTCT and the supervised baseline take
two. Lightning's ``trainer.global_step`` counts optimiser steps under manual optimisation, so it
advances by 4 (AdvMIM) or 2 (CTCT, supervised) per iteration. The module therefore counts
iterations itself (:attr:`AdvMIMModule.iteration`, saved in checkpoints), runs the poly learning
rate and the CTCT ramp-up on that count, and stops the run once ``max_iterations`` iterations
are done. Setting ``trainer.max_steps`` is not needed; if you set it, use
``max_iterations * optimizer_steps_per_iteration``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from advmim_lightning.evaluation import inference
from advmim_lightning.evaluation.metrics import SegmentationMetrics
from advmim_lightning.method import config, contracts, objective, optim, records
from advmim_lightning.method.config import METHOD_DEFAULTS, NETWORK_NAMES, Method
from advmim_lightning.method.cuda_graph import GraphedIteration
from advmim_lightning.method.nonfinite import NonFiniteMonitor, UpdateSkipper, batch_case_ids
from advmim_lightning.method.objective import SegmenterOutputs
from advmim_lightning.method.randomness import iteration_seed
from advmim_lightning.method.schedules import ctct_consistency_weight, poly_lr
from advmim_lightning.networks import (
    Discriminator,
    SwinUNet,
    UNet,
    random_block_mask,
    random_init_warning,
)
from advmim_lightning.run import checkpoints, lightning_private

__all__ = ["METHOD_DEFAULTS", "NETWORK_NAMES", "AdvMIMModule", "Method", "SegmenterOutputs"]

log = logging.getLogger(__name__)


class AdvMIMModule(pl.LightningModule):
    """CNN-Transformer cross teaching with AdvMIM's masked domain and adversarial loss.

    ``AdvMIMModule()`` works as it is (the library's UNet and the Swin-UNet "tiny lite" at
    224 x 224, 4 classes, the public code's AdvMIM defaults). Every weight and schedule of
    ``docs/method.md`` is an argument; those that default to ``None`` take the chosen method's value
    (see :data:`METHOD_DEFAULTS`), and the resolved values are stored in ``self.hparams``.

    Args:
        cnn: The CNN segmenter. Any ``nn.Module`` with the segmenter contract: ``net(x)`` returns
            logits ``B x num_classes x H x W`` for ``x`` of ``B x in_channels x H x W``, and (for
            ``method="advmim"``) ``net(x, mask=m)`` with a ``B x H x W`` bool mask returns
            ``(logits, masked_logits)``. Default: :class:`~advmim_lightning.networks.UNet`.
            A ``{"class_path": ..., "init_args": ...}`` mapping (as stored in checkpoints) is
            rebuilt when its class lives in ``advmim_lightning``.
        transformer: The transformer segmenter, same contract. Default:
            :class:`~advmim_lightning.networks.SwinUNet` at ``image_size``.
        num_classes: Number of classes including background.
        in_channels: Input channels of the images.
        image_size: Network input size ``(H, W)``; evaluation resizes every slice to it.
        class_names: Names of all classes incl. background, used in metric names
            (``val/dice_<name>``). Default ``class1 ... class{C-1}`` for the foreground.
        method: ``"advmim"``, ``"ctct"`` (Luo et al. cross teaching) or ``"supervised"``
            (labeled data only).
        max_iterations: Training iterations (paired batches); the run stops after them and the
            poly schedule reaches 0 there.
        lr: Base learning rate of all four SGD optimisers (AdvMIM 0.05, others 0.01).
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        poly_power: Exponent of the poly schedule ``lr * (1 - it / max_iterations) ** power``.
        grad_clip_norm: Gradient-norm clip per network (AdvMIM 5, others none). ``0`` disables.
        sup_weight: Weight of the supervised ``CE + Dice`` per network (AdvMIM 1, others 0.5).
        cross_teaching_weight: Weight of the cross-teaching Dice on unlabeled images (0.1).
        cross_teaching_rampup: Ramp the cross-teaching weight up as CTCT does
            (``w * exp(-5 (1 - t/L)^2)``, ``t = iteration // rampup_interval``). CTCT: on,
            AdvMIM: off (constant weight).
        rampup_length: ``L`` of the ramp-up, in ramp units.
        rampup_interval: Iterations per ramp unit (150 in CTCT).
        masked_sup_weight: AdvMIM: weight of the supervised loss on the masked domain.
        masked_pseudo_weight: AdvMIM: weight of the confidence-weighted pseudo-label loss on the
            masked unlabeled images.
        adversarial_weight: AdvMIM: weight of the LSGAN generator term (0.001).
        discriminator_weight: AdvMIM: weight of the discriminator loss (0.1).
        forward_batching: How each segmenter sees an iteration's images. ``"separate"``
            (AdvMIM's default, as its public code): one forward call on the labeled batch, then
            one on the unlabeled batch, so batch norm normalises (and updates its running
            statistics from) each batch on its own. ``"joint"`` (CTCT's default, as SSL4MIS):
            one forward call on the labeled and unlabeled images together. Not used by the
            supervised baseline, which sees labeled images only.
        loss_variant: ``"public_code"`` (default: masked supervised Dice for the CNN only,
            confidence-weighted CE only on unlabeled masked images) or ``"paper"`` (masked
            ``CE + Dice`` for both networks, confidence-weighted ``CE + Dice``).
        discriminator_real: What the discriminators see as "real": ``"labeled"`` (public code:
            the original-domain prediction on the labeled images) or ``"unlabeled"`` (the
            original-domain prediction on the same unlabeled images whose masked prediction is
            "fake", so that only the domain differs).
        mask_ratio: Fraction of mask blocks replaced in the masked domain (0.7).
        mask_block_size: Side of a square mask block in pixels (32).
        discriminator_base_channels: Width of the first discriminator layer (64).
        eval_network: Which prediction validation/test/predict report: ``"transformer"``,
            ``"cnn"`` or ``"ensemble"`` (mean of both softmaxes). Validation logs both networks'
            Dice either way.
        eval_interpolation: How slices are resized to ``image_size`` at evaluation:
            ``"nearest"`` (SSL4MIS: ``scipy.ndimage.zoom(order=0)``'s index mapping) or
            ``"bilinear"`` (``align_corners=True``). Predictions always go back to the slice
            size with the zoom mapping (see :meth:`predict_volume`).
        eval_slice_batch: Slices predicted at once during evaluation.
        nsd_tolerance: Tolerance of the normalised surface Dice, in the volume's units (mm
            where spacing is known, voxels otherwise).
        rng_seed: Seed of the training step's randomness. Masks, dropout and drop-path are
            drawn from generators re-seeded every iteration from ``(rng_seed, global rank,
            iteration)``, so ranks differ and a resumed run repeats the interrupted one exactly.
            Named apart from the data module's ``seed`` so both can be logged together.
        nonfinite_check: ``"raise"`` (default): a non-finite loss term, or a trained part whose
            weights or batch-norm statistics went non-finite in the update (possible while
            every loss term is still finite), is flagged on the device every iteration and
            checked on logging iterations (``log_every_n_steps``, no host sync in between) and
            before every checkpoint; the error names the iteration range, the offending terms
            or parts and the batches' case ids. ``"skip"``: an iteration whose gradients (after
            DDP averaging, so all ranks agree) are not all finite changes nothing: parameters,
            momenta and batch-norm statistics of all four parts are restored on the device, the
            iteration still counts, and logging iterations warn naming it and its cases and log
            ``train/skipped_iterations``. Costs a copy of the trained state per iteration.
            ``"off"`` disables the check.
        max_skipped_in_a_row: With ``nonfinite_check="skip"``, raise once this many consecutive
            iterations were skipped (checked on logging iterations).
        optimizer_impl: How the four SGD optimisers run their update: ``"auto"`` (torch's
            choice: one multi-tensor ``foreach`` launch per optimiser on CUDA), ``"for_loop"``
            (a kernel per parameter), ``"foreach"`` or ``"fused"`` (one fused kernel). The
            update is the same SGD; only rounding may differ in the last bits.
        channels_last: Keep the networks' weights and the training images in channels-last
            memory layout, which cuDNN's fastest convolutions (tensor cores, bf16) prefer. Same
            arithmetic up to rounding; dropout draws its random masks in memory order, so they
            differ from the default layout's (same distribution).
        compile_networks: ``torch.compile`` the segmenters and discriminators in place when
            fitting (``nn.Module.compile``; checkpoints keep their keys; validation inside the
            fit runs compiled too): ``None`` (off), ``"default"``, ``"reduce-overhead"`` (adds
            CUDA graphs to cut launch overhead) or ``"max-autotune"``. The first iterations
            compile (seconds to minutes). Same arithmetic up to rounding, but compiled dropout
            and drop-path draw other random masks than eager ones (same distribution).
        cuda_graph: Capture the whole training iteration (both segmenters forward and
            backward, every loss term, both discriminator passes, the clipping and the SGD
            updates) as one CUDA graph after 3 eager warm-up iterations, and replay it once per
            iteration (:mod:`advmim_lightning.method.cuda_graph`). Needs a CUDA device, a single
            process and same-sized batches; the SGD update runs outside Lightning's optimiser
            wrappers, so callbacks' ``on_before_optimizer_step`` / ``on_after_backward`` hooks
            are not called per iteration (steps are still counted). Checkpoints, resume,
            logging, non-finite checks and bf16 behave as without it; the arithmetic is the
            same up to rounding (a foreach SGD update with a device learning rate). Combines
            with ``compile_networks="default"``, not with the modes that capture graphs of
            their own.

    Raises:
        ValueError: On an unknown method, an argument the chosen method does not use, or
            inconsistent sizes / class counts between the module and its networks.
    """

    def __init__(
        self,
        cnn: nn.Module | Mapping[str, Any] | None = None,
        transformer: nn.Module | Mapping[str, Any] | None = None,
        num_classes: int = 4,
        in_channels: int = 1,
        image_size: tuple[int, int] = (224, 224),
        class_names: list[str] | None = None,
        method: Method = "advmim",
        max_iterations: int = 30000,
        lr: float | None = None,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        poly_power: float = 0.9,
        grad_clip_norm: float | None = None,
        sup_weight: float | None = None,
        cross_teaching_weight: float | None = None,
        cross_teaching_rampup: bool | None = None,
        rampup_length: int = 200,
        rampup_interval: int = 150,
        masked_sup_weight: float | None = None,
        masked_pseudo_weight: float | None = None,
        adversarial_weight: float | None = None,
        discriminator_weight: float | None = None,
        forward_batching: Literal["separate", "joint"] | None = None,
        loss_variant: Literal["public_code", "paper"] = "public_code",
        discriminator_real: Literal["labeled", "unlabeled"] = "labeled",
        mask_ratio: float = 0.7,
        mask_block_size: int = 32,
        discriminator_base_channels: int = 64,
        eval_network: Literal["transformer", "cnn", "ensemble"] = "transformer",
        eval_interpolation: Literal["nearest", "bilinear"] = "nearest",
        eval_slice_batch: int = 16,
        nsd_tolerance: float = 1.0,
        rng_seed: int = 0,
        nonfinite_check: Literal["raise", "skip", "off"] = "raise",
        max_skipped_in_a_row: int = 100,
        optimizer_impl: Literal["auto", "for_loop", "foreach", "fused"] = "auto",
        channels_last: bool = False,
        compile_networks: Literal["default", "reduce-overhead", "max-autotune"] | None = None,
        cuda_graph: bool = False,
    ) -> None:
        super().__init__()
        image_size = config.check_arguments(
            method=method,
            loss_variant=loss_variant,
            forward_batching=forward_batching,
            discriminator_real=discriminator_real,
            eval_network=eval_network,
            eval_interpolation=eval_interpolation,
            nonfinite_check=nonfinite_check,
            optimizer_impl=optimizer_impl,
            compile_networks=compile_networks,
            cuda_graph=cuda_graph,
            max_skipped_in_a_row=max_skipped_in_a_row,
            num_classes=num_classes,
            image_size=image_size,
            max_iterations=max_iterations,
            mask_ratio=mask_ratio,
            mask_block_size=mask_block_size,
        )
        given = {
            "lr": lr,
            "grad_clip_norm": grad_clip_norm,
            "sup_weight": sup_weight,
            "cross_teaching_weight": cross_teaching_weight,
            "cross_teaching_rampup": cross_teaching_rampup,
            "masked_sup_weight": masked_sup_weight,
            "masked_pseudo_weight": masked_pseudo_weight,
            "adversarial_weight": adversarial_weight,
            "discriminator_weight": discriminator_weight,
            "forward_batching": forward_batching,
        }
        resolved = config.resolve_settings(method, given)

        self.method: Method = method
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.image_size = image_size
        self.class_names = config.resolve_class_names(class_names, num_classes)
        self.eval_network = eval_network
        self.cnn = checkpoints.build_network(
            cnn, UNet, in_channels=in_channels, num_classes=num_classes
        )
        self.transformer = checkpoints.build_network(
            transformer,
            SwinUNet,
            in_channels=in_channels,
            num_classes=num_classes,
            img_size=image_size,
        )
        for name in NETWORK_NAMES:
            contracts.check_network(name, getattr(self, name), num_classes, in_channels, image_size)
        self.uses_unlabeled = method != "supervised"
        self.uses_masking = method == "advmim"
        if not self.uses_masking:
            self._freeze_unused_mask_tokens()
        if self.uses_masking:
            self.disc_cnn = Discriminator(num_classes, discriminator_base_channels)
            self.disc_transformer = Discriminator(num_classes, discriminator_base_channels)
        self.cfg = dict(resolved)
        self.automatic_optimization = False

        self.save_hyperparameters(ignore=["cnn", "transformer"])
        self.hparams.update(resolved)
        for unused_by_method in set(given) - set(resolved):
            self.hparams.pop(unused_by_method)
        self.hparams["image_size"] = list(image_size)
        self.hparams["class_names"] = self.class_names
        self.hparams["cnn"] = checkpoints.network_spec(self.cnn)
        self.hparams["transformer"] = checkpoints.network_spec(self.transformer)
        # Loggers record ``hparams_initial``: make it what trains (resolved method defaults, the
        # networks' specs), not the arguments as given (None). ``image_size`` keeps the value
        # given (as the data module's, which Lightning merges with it and compares by type).
        given_size = self.hparams_initial.get("image_size", image_size)
        lightning_private.set_hparams_initial(self, {**self.hparams, "image_size": given_size})

        #: Completed training iterations (paired batches); saved in checkpoints and in the
        #: state dict (key ``iteration``), so it travels wherever the weights do (e.g. back
        #: from ``ddp_spawn`` workers, which return only the state dict).
        self.iteration = 0
        #: Whether the weights came from an AdvMIMModule checkpoint (set by on_load_checkpoint).
        self.restored_from_checkpoint = False
        self.register_state_dict_post_hook(checkpoints.save_iteration)
        self.register_load_state_dict_pre_hook(checkpoints.load_iteration)
        self._mask_generator: torch.Generator | None = None
        self._mask_generator_iteration = -1
        self._monitor = NonFiniteMonitor()
        self._skipper: UpdateSkipper | None = None  # built at train start (needs optimisers)
        #: The captured iteration of ``cuda_graph=True`` (built at train start).
        self._graphed: GraphedIteration | None = None

        fg_names = self.class_names[1:]
        self.val_metrics = SegmentationMetrics(num_classes, fg_names, nsd_tolerance=nsd_tolerance)
        self.test_metrics = SegmentationMetrics(num_classes, fg_names, nsd_tolerance=nsd_tolerance)
        self.val_dice_per_network = nn.ModuleDict(
            {
                name: SegmentationMetrics(num_classes, fg_names, metric_names=("dice",))
                for name in NETWORK_NAMES
            }
        )
        self._test_case_ids: dict[int, str] = {}
        #: Segmenter-contract checks done (``"train"``, ``"eval"``) and the hooks still waiting.
        self._contract_checked: set[str] = set()
        self._contract_hooks: dict[str, Any] = {}

    # ------------------------------------------------------------------ properties
    @property
    def optimizer_steps_per_iteration(self) -> int:
        """Optimiser steps (and so Lightning ``global_step`` increments) per iteration."""
        return 4 if self.uses_masking else 2

    @property
    def segmenters(self) -> dict[str, nn.Module]:
        """The two segmenters by name (``transformer``, ``cnn``)."""
        return {"transformer": self.transformer, "cnn": self.cnn}

    def forward(self, x: Tensor) -> Tensor:
        """Softmax probabilities of the evaluated network(s) for ``x`` (``B x C_in x H x W``).

        Returns:
            ``B x num_classes x H x W`` probabilities (the mean of both for ``"ensemble"``).
        """
        return self._probabilities(x)[self.eval_network]

    # ------------------------------------------------------------------ optimisers
    def configure_optimizers(self) -> tuple[list[torch.optim.Optimizer], list[dict[str, Any]]]:
        """One SGD per trained part: transformer, CNN (and both discriminators for AdvMIM).

        The learning rate is set from :attr:`iteration` before every iteration (poly schedule),
        so there is no scheduler state to keep in step with it. Each optimiser comes with a
        constant (factor 1) scheduler only to name it after its network for Lightning
        (``LearningRateMonitor`` logs ``lr-transformer``, ``lr-cnn``, ``lr-disc_transformer``,
        ``lr-disc_cnn``); it never changes the rate.

        Returns:
            The optimisers, in :attr:`trained_part_names` order, and their scheduler configs.
        """
        return optim.build_optimizers(
            self.trained_parts,
            self.trained_part_names,
            lr=self.cfg["lr"],
            momentum=self.hparams.momentum,
            weight_decay=self.hparams.weight_decay,
            clip_norm=self.cfg["grad_clip_norm"],
            impl=self.hparams.optimizer_impl,
        )

    @property
    def trained_part_names(self) -> list[str]:
        """Names of :attr:`trained_parts`, in the same order (``lr-<name>`` in lr monitors)."""
        names = ["transformer", "cnn"]
        if self.uses_masking:
            names += ["disc_transformer", "disc_cnn"]
        return names

    @property
    def trained_parts(self) -> list[nn.Module]:
        """The networks with an optimiser: segmenters (and discriminators for AdvMIM)."""
        parts: list[nn.Module] = [self.transformer, self.cnn]
        if self.uses_masking:
            parts += [self.disc_transformer, self.disc_cnn]
        return parts

    def configure_model(self) -> None:
        """Apply the speed options: memory layout (every stage), compilation (fit only).

        Networks compiled for a fit stay compiled for its validation. ``validate``, ``test``
        and ``predict`` on their own do not compile (volumes come in varying slice counts).
        """
        if self.hparams.channels_last:
            for part in self.trained_parts:
                part.to(memory_format=torch.channels_last)
        mode = self.hparams.compile_networks
        fitting = lightning_private.has_trainer(self) and self.trainer.state.fn == "fit"
        if mode is not None and fitting and not getattr(self, "_networks_compiled", False):
            for part in self.trained_parts:
                part.compile(mode=mode)
            self._networks_compiled = True

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Lightning calls this inside ``optimizer.step()``.
        optim.clip_gradients(optimizer)

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        if self.hparams.get("cuda_graph", False):
            self._check_cuda_graph_trainer()
        contracts.check_fit_trainer(self.trainer, self.uses_masking)

    def _check_cuda_graph_trainer(self) -> None:
        """Refuse ``cuda_graph=True`` where one captured iteration cannot serve the run."""
        contracts.check_cuda_graph_trainer(self.trainer)

    def on_fit_start(self) -> None:
        """Warn once (rank 0) when a fresh fit starts a Swin-T sized Swin-UNet from random weights.

        Not on a resume (``ckpt_path``) or after ``load_from_checkpoint``: the weights then come
        from the checkpoint. Small custom Swin-UNets (no ImageNet weights fit them) never warn.
        """
        if self.trainer.ckpt_path is not None or self.restored_from_checkpoint:
            return
        message = random_init_warning(self.transformer)
        if message is not None and self.global_rank == 0:
            log.warning("%s", message)

    def _freeze_unused_mask_tokens(self) -> None:
        """Baselines never run the masked stream: keep its tokens out of training (and DDP)."""
        for net in self.segmenters.values():
            for name, param in net.named_parameters():
                if name.split(".")[-1] == "mask_token":
                    param.requires_grad_(False)

    # ------------------------------------------------------------------ training
    def _current_lr(self) -> float:
        return poly_lr(
            self.cfg["lr"], self.iteration, self.hparams.max_iterations, self.hparams.poly_power
        )

    def current_cross_teaching_weight(self) -> float:
        """The cross-teaching weight at the current iteration (ramped for CTCT)."""
        return self.cross_teaching_weight_at(self.iteration)

    def cross_teaching_weight_at(self, iteration: int) -> float:
        """The cross-teaching weight at ``iteration`` (0-based; ramped for CTCT)."""
        weight = self.cfg.get("cross_teaching_weight", 0.0)
        if not self.cfg.get("cross_teaching_rampup", False):
            return weight
        return ctct_consistency_weight(
            iteration,
            weight=weight,
            rampup_length=self.hparams.rampup_length,
            iterations_per_unit=self.hparams.rampup_interval,
        )

    def mask_generator(self) -> torch.Generator:
        """The mask generator on the module's device, seeded for the current iteration.

        Mask randomness is keyed by ``(rng_seed, global rank, iteration)``: the generator is
        re-seeded at the start of every iteration (a host-side operation, no device sync), so
        masks differ across ranks, need no saved state, and repeat exactly after a resume.
        """
        if self._mask_generator is None or self._mask_generator.device != self.device:
            self._mask_generator = torch.Generator(device=self.device)
            self._mask_generator_iteration = -1
        if self._mask_generator_iteration != self.iteration:
            self._mask_generator.manual_seed(
                iteration_seed(self.hparams.rng_seed, self.global_rank, self.iteration)
            )
            self._mask_generator_iteration = self.iteration
        return self._mask_generator

    def draw_mask(self, batch_size: int) -> Tensor:
        """A fresh ``B x H x W`` block mask drawn on the device (True = masked)."""
        return random_block_mask(
            batch_size,
            self.image_size,
            block_size=self.hparams.mask_block_size,
            ratio=self.hparams.mask_ratio,
            generator=self.mask_generator(),
            device=self.device,
        )

    def on_train_start(self) -> None:
        # Lightning keeps the train/eval mode it finds at fit(); a network left in eval mode
        # (e.g. after a look at predictions in a notebook) would train without dropout and
        # with frozen batch-norm statistics.
        self.train()
        # A resumed optimiser brings the saved implementation flags: apply the current ones.
        flags = optim.SGD_IMPLEMENTATIONS[self.hparams.optimizer_impl]
        for optimizer in self.trainer.optimizers:
            for group in optimizer.param_groups:
                group.update(flags)
        self._monitor = NonFiniteMonitor(
            first_iteration=self.iteration,
            parts=dict(zip(self.trained_part_names, self.trained_parts, strict=True)),
        )
        self._skipper = None
        if self.hparams.nonfinite_check == "skip":
            self._skipper = UpdateSkipper(
                self.trained_parts, self.trainer.optimizers, self.hparams.max_skipped_in_a_row
            )
        self._set_learning_rates(self._current_lr())
        contracts.watch_segmenter_contract(self, "train")
        self._graphed = None
        if self.hparams.get("cuda_graph", False):
            self._graphed = GraphedIteration(self, capture=self.device.type == "cuda")
        if self.iteration >= self.hparams.max_iterations:
            rank_zero_warn(
                f"AdvMIMModule has already trained max_iterations={self.hparams.max_iterations} "
                f"iterations (model.iteration={self.iteration}); fit() has nothing to train and "
                "stops. To train longer, raise max_iterations (the poly learning rate then "
                "decays to 0 at the new value): AdvMIMModule.load_from_checkpoint(path, "
                "max_iterations=...), or model.hparams.max_iterations = ... before fit (also "
                "when resuming with ckpt_path)."
            )
            self.trainer.should_stop = True
        self._warn_if_the_ramp_outlasts_the_run()

    def _warn_if_the_ramp_outlasts_the_run(self) -> None:
        """CTCT's ramp-up is counted in iterations: a shorter run never reaches its weight."""
        weight = self.cfg.get("cross_teaching_weight", 0.0)
        if not (self.cfg.get("cross_teaching_rampup", False) and self.uses_unlabeled and weight):
            return
        length, interval = self.hparams.rampup_length, self.hparams.rampup_interval
        iterations = self.hparams.max_iterations
        if length * interval <= iterations:
            return
        last = self.cross_teaching_weight_at(iterations - 1)
        rank_zero_warn(
            f"the cross-teaching weight ramps up over rampup_length x rampup_interval = "
            f"{length} x {interval} = {length * interval} iterations (CTCT's 200 x 150 = its "
            f"30000), but max_iterations={iterations}: it ends at {last:.3g}, "
            f"{100 * last / weight:.2g} % of cross_teaching_weight={weight}. To keep the "
            "published ramp's shape in this shorter run, set model.rampup_interval="
            f"{max(iterations // length, 1)} (max_iterations / rampup_length)."
        )

    def on_validation_start(self) -> None:
        contracts.watch_segmenter_contract(self, "eval")

    def on_test_start(self) -> None:
        contracts.watch_segmenter_contract(self, "eval")

    def on_predict_start(self) -> None:
        contracts.watch_segmenter_contract(self, "eval")

    def _set_learning_rates(self, lr: float) -> None:
        """Set every optimiser's rate (before the batch hooks, where lr monitors read it)."""
        for optimizer in self.trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        if self.iteration >= self.hparams.max_iterations:
            self.trainer.should_stop = True
            return -1
        # Dropout and drop-path draw from torch's global generators: key them by iteration
        # too (a host-side re-seed, no device sync), so a resume needs no RNG state.
        torch.manual_seed(
            iteration_seed(self.hparams.rng_seed, self.global_rank, self.iteration, 1)
        )
        return None

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        """One iteration: both backward passes, then the four optimiser steps (two: baselines).

        Loss values stay on the device; they are handed to the loggers only on logging steps
        (``trainer.log_every_n_steps``), so the step itself never waits for the GPU.
        """
        contracts.check_training_batch(batch)
        labeled = batch["labeled"]
        x_l, y = self._layout(labeled["image"]), labeled["label"]
        x_u = None
        if self.uses_unlabeled:
            if "unlabeled" not in batch:
                raise ValueError(
                    f"method={self.method!r} needs unlabeled images but the batch has only "
                    f"{sorted(batch)}; set data.require_unlabeled=true and give unlabeled cases"
                )
            x_u = self._layout(batch["unlabeled"]["image"])

        lr = self._current_lr()
        ct_weight = self.current_cross_teaching_weight() if x_u is not None else 0.0
        optimizers = self.optimizers()
        clip = self.cfg["grad_clip_norm"]
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = lr
                group["clip_norm"] = clip  # from the config, also after a resume
        skipper = self._skipper
        if skipper is not None:
            skipper.snapshot()  # before the forward pass: batch-norm statistics move in it
        masks = self._draw_iteration_masks(x_l, x_u)

        if self._graphed is not None:
            # The graph's output tensors are overwritten by the next replay: read now, and
            # logged values are copied below.
            terms, total = self._graphed.run(x_l, y, x_u, masks, lr, ct_weight)
            finite = skipper.gradients_finite() if skipper is not None else None
            for opt in optimizers:  # the graph stepped them: count the steps as Lightning does
                lightning_private.count_optimizer_step(opt)
        else:
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            terms, total = self._losses_and_backward(
                x_l, y, x_u, ct_weight, masks, self.manual_backward
            )
            finite = skipper.gradients_finite() if skipper is not None else None
            for opt in optimizers:  # transformer, CNN, then the discriminators
                opt.step()
        case_ids = batch_case_ids(batch)
        if skipper is not None:
            skipper.restore_unless(finite, self.iteration, case_ids)
        if self.hparams.nonfinite_check == "raise":
            self._monitor.flag(terms, case_ids, self.iteration)

        if self._is_logging_iteration():
            self.check_nonfinite_now()
            logged = records.training_values(
                terms,
                total,
                lr,
                self.iteration,
                ct_weight if x_u is not None else None,
                skipper.skipped_total if skipper is not None else None,
            )
            self.log_dict(logged, on_step=True, on_epoch=False, batch_size=x_l.shape[0])
        self.iteration += 1
        self._set_learning_rates(self._current_lr())  # the next iteration's, for lr monitors
        if self.iteration >= self.hparams.max_iterations:
            # Stop the way Lightning expects, right after the last iteration: the run's end is
            # validated (and checkpointed) even when it falls mid-epoch.
            self.trainer.should_stop = True

    def check_nonfinite_now(self) -> None:
        """Act on the non-finite flags of the iterations not checked yet (one host sync).

        Called on logging iterations and by the run's checkpoint callback before it saves, so
        a checkpoint never holds the weights of a run that has already gone non-finite. Under
        DDP the flags of all ranks are combined, so every rank raises together.

        Raises:
            FloatingPointError: As described for ``nonfinite_check``.
        """
        if self.hparams.nonfinite_check == "raise":
            strategy = self.trainer.strategy if lightning_private.has_trainer(self) else None
            reduce = None
            if strategy is not None and self.trainer.world_size > 1:

                def reduce(flags: Tensor) -> Tensor:
                    return strategy.reduce(flags, reduce_op="max")

            self._monitor.check(reduce)
        if self._skipper is not None:
            self._skipper.report()

    def _layout(self, images: Tensor) -> Tensor:
        if self.hparams.channels_last:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def _is_logging_iteration(self) -> bool:
        """Whether Lightning's loggers write at this iteration (``log_every_n_steps``)."""
        every = max(int(getattr(self.trainer, "log_every_n_steps", 1) or 1), 1)
        return (
            self.iteration + 1
        ) % every == 0 or self.iteration + 1 == self.hparams.max_iterations

    def _losses_and_backward(
        self,
        x_l: Tensor,
        y: Tensor,
        x_u: Tensor | None,
        ct_weight: float | Tensor,
        masks: Sequence[Tensor],
        backward: Callable[[Tensor], Any],
    ) -> tuple[dict[str, Tensor], Tensor]:
        """Every loss term of one iteration and both backward passes (no optimiser step).

        ``backward`` is ``manual_backward`` in the eager step and ``Tensor.backward`` inside the
        CUDA graph (:mod:`advmim_lightning.method.cuda_graph`), so both run the same iteration.

        Returns:
            The unweighted terms by name (segmenters', then discriminators') and the
            segmenters' weighted total.
        """
        out = self._segmenter_losses(x_l, y, x_u, ct_weight, masks)
        total = torch.stack(list(out.weighted.values())).sum()
        terms = dict(out.terms)
        backward(total)
        if self.uses_masking:
            # The discriminators see detached maps of this forward pass, so their backward may
            # come before the segmenter steps: all four steps then follow one finite check.
            disc_terms = self._discriminator_losses(out)
            backward(self.cfg["discriminator_weight"] * sum(disc_terms.values()))
            terms.update(disc_terms)
        return terms, total

    def _segmenter_losses(
        self,
        x_l: Tensor,
        y: Tensor,
        x_u: Tensor | None,
        ct_weight: float | Tensor = 0.0,
        masks: Sequence[Tensor] | None = None,
    ) -> SegmenterOutputs:
        """Every segmenter loss term of one iteration.

        Args:
            x_l: ``B_l x C x H x W`` labeled images; ``y`` their ``B_l x H x W`` labels.
            x_u: ``B_u x C x H x W`` unlabeled images, or None (supervised).
            ct_weight: Cross-teaching weight of this iteration (a number or a 0-d tensor).
            masks: AdvMIM's masks as :meth:`_draw_iteration_masks` returns them; drawn here
                when None.

        Returns:
            :func:`advmim_lightning.method.objective.segmenter_losses`' outputs.
        """
        logits, masked_logits = self._segmenter_forward(x_l, x_u, masks)
        return objective.segmenter_losses(
            logits,
            masked_logits,
            y,
            x_l.shape[0],
            unlabeled=x_u is not None,
            settings=self.cfg,
            ct_weight=ct_weight,
            loss_variant=self.hparams.loss_variant,
            discriminators=self.discriminators if self.uses_masking else None,
        )

    def _forward_batches(self, x_l: Tensor, x_u: Tensor | None) -> list[Tensor]:
        """The batches each segmenter is called on, in order (see ``forward_batching``)."""
        return objective.forward_batches(x_l, x_u, self.cfg.get("forward_batching"))

    def _draw_iteration_masks(self, x_l: Tensor, x_u: Tensor | None) -> list[Tensor]:
        """AdvMIM's masks of this iteration, one per segmenter call, in call order.

        Every forward batch (:meth:`_forward_batches`) gets one mask per segmenter
        (transformer first); empty for the baselines. The masks come from the iteration's own
        generator (:meth:`mask_generator`), which nothing else draws from.
        """
        if not self.uses_masking:
            return []
        return [
            self.draw_mask(x.shape[0])
            for x in self._forward_batches(x_l, x_u)
            for _ in self.segmenters
        ]

    def _segmenter_forward(
        self, x_l: Tensor, x_u: Tensor | None, masks: Sequence[Tensor] | None = None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Each segmenter's logits on ``[x_l; x_u]`` (and masked-domain logits for AdvMIM).

        With ``forward_batching="separate"`` the calls follow the public AdvMIM code's order:
        every network on the labeled batch, then every network on the unlabeled batch, each
        call with its own mask (``masks``, drawn here when None).

        Returns:
            ``(logits, masked_logits)`` by network name, each ``(B_l + B_u) x K x H x W``;
            ``masked_logits`` is empty without masking.
        """
        if masks is None:
            masks = self._draw_iteration_masks(x_l, x_u)
        batches = self._forward_batches(x_l, x_u)
        return objective.segmenter_forward(self.segmenters, batches, masks, self.uses_masking)

    @property
    def discriminators(self) -> dict[str, nn.Module]:
        """AdvMIM's discriminators by the name of the segmenter they judge."""
        return {"transformer": self.disc_transformer, "cnn": self.disc_cnn}

    def _discriminator_losses(self, out: SegmenterOutputs) -> dict[str, Tensor]:
        """LSGAN discriminator terms on detached maps ("real" per ``discriminator_real``)."""
        return objective.discriminator_losses(
            out, self.discriminators, self.hparams.discriminator_real
        )

    # ------------------------------------------------------------------ evaluation
    def _probabilities(self, x: Tensor) -> dict[str, Tensor]:
        """Softmax of each network (and their mean, ``"ensemble"``) for ``B x C x H x W``."""
        return inference.probabilities(self.segmenters, x)

    @torch.no_grad()
    def predict_volume(self, image: Tensor) -> dict[str, Tensor]:
        """Label volumes of a whole case, predicted slice by slice as SSL4MIS evaluates.

        Slices go to ``image_size`` and the predictions back to the slice size as
        :func:`advmim_lightning.evaluation.inference.predict_volume` describes
        (``eval_interpolation``, ``eval_slice_batch``).

        Args:
            image: ``C x D x H x W`` float volume (slices along ``D``).

        Returns:
            ``{"transformer", "cnn", "ensemble"}`` -> ``D x H x W`` int64 label volumes.
        """
        return inference.predict_volume(
            self.segmenters,
            image,
            self.image_size,
            self.hparams.eval_slice_batch,
            self.hparams.eval_interpolation,
        )

    def validation_step(self, item: Mapping[str, Any], batch_idx: int) -> dict[str, Tensor]:
        """Score one case; returns the label volumes by network (for panel logging)."""
        predictions = self.predict_volume(item["image"])
        label = item["label"]
        index, spacing = inference.case_index_and_spacing(item)
        self.val_metrics.update(predictions[self.eval_network], label, index, spacing)
        for name, metric in self.val_dice_per_network.items():
            metric.update(predictions[name], label, index, spacing)
        return predictions

    def on_validation_epoch_end(self) -> None:
        values, dice_mean = records.validation_values(self.val_metrics, self.val_dice_per_network)
        self.log_dict(values, sync_dist=False)
        self.log("val/dice_mean", dice_mean, prog_bar=True, sync_dist=False)

    def test_step(self, item: Mapping[str, Any], batch_idx: int) -> None:
        predictions = self.predict_volume(item["image"])
        index, spacing = inference.case_index_and_spacing(item)
        self._test_case_ids[index] = str(item["case_id"])
        self.test_metrics.update(predictions[self.eval_network], item["label"], index, spacing)

    def on_test_epoch_end(self) -> None:
        values = self.test_metrics.compute()
        indices, table = self.test_metrics.per_case()
        self.test_metrics.reset()
        self.log_dict({f"test/{k}": v for k, v in values.items()}, sync_dist=False)
        # trainer.log_dir broadcasts from rank 0: every rank must ask for it, or DDP hangs
        out_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        if self.trainer.is_global_zero:
            path = self.write_test_csv(indices, table, values, out_dir)
            log.info("per-case test metrics written to %s", path)

    def write_test_csv(
        self, indices: Tensor, table: Tensor, summary: Mapping[str, Tensor], out_dir: Path
    ) -> Path:
        """Write the per-case x per-class test metrics and a summary row as CSV.

        Args:
            indices: ``N`` case indices.
            table: ``N x len(METRIC_NAMES) x (C - 1)`` metric values.
            summary: The aggregated metrics (``dice_mean``, ``dice_<class>``, ...).
            out_dir: Folder to write into (the run's log folder).

        Returns:
            The path written: ``<out_dir>/test_metrics.csv``.
        """
        dataset_ids = self._dataset_case_ids()
        test_ids = {index: case_id for index, case_id in self._test_case_ids.items() if case_id}
        return inference.write_test_csv(
            out_dir / "test_metrics.csv",
            indices,
            table,
            summary,
            self.class_names[1:],
            {**dataset_ids, **test_ids},
        )

    def _dataset_case_ids(self) -> dict[int, str]:
        """The test dataset's case ids by index, where the trainer's data module offers them."""
        datamodule = getattr(self.trainer, "datamodule", None)
        dataset = getattr(datamodule, "test_dataset", None)
        case_ids = getattr(dataset, "case_ids", None)
        return dict(enumerate(case_ids())) if callable(case_ids) else {}

    def predict_step(self, item: Mapping[str, Any], batch_idx: int) -> dict[str, Any]:
        """Predict one case and return its label volume in the input file's array order.

        Returns:
            ``{"case_id", "prediction" (uint8 array, original axis order), "affine", "source",
            "spacing"}``;
            :class:`~advmim_lightning.evaluation.prediction_writer.PredictionWriter` saves it.
        """
        labels = self.predict_volume(item["image"])[self.eval_network]
        return records.prediction_record(item, labels)

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: str | Path, *args: Any, **kwargs: Any
    ) -> AdvMIMModule:
        """Lightning's ``load_from_checkpoint``, after checking the file safely.

        The file is read with ``weights_only=True`` first, and refused (naming it) when it is
        truncated, not an ``AdvMIMModule`` checkpoint, or names classes outside
        ``advmim_lightning`` and ``torch`` that would be imported to rebuild it (networks
        passed as arguments, ``cnn=MyNet(...)``, are not rebuilt, so theirs are not checked).
        Only local paths (``str`` or ``Path``) are checked; a file object or a remote URL goes
        to Lightning unchecked.
        """
        if isinstance(checkpoint_path, (str, Path)):
            checkpoint = checkpoints.read_checkpoint(checkpoint_path, check_classes=False)
            checkpoints.require_own_networks(checkpoint, checkpoint_path, given=kwargs)
            checkpoints.refuse_untrusted_classes(checkpoint, checkpoint_path, overridden=kwargs)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def to_torchscript(  # type: ignore[override]
        self,
        file_path: str | Path | None = None,
        method: str | None = "script",
        example_inputs: Any | None = None,
        **kwargs: Any,
    ) -> Any:
        """TorchScript of :meth:`forward` by tracing (``method="trace"``); scripting is refused.

        Tracing records the evaluated network's softmax for ``B x in_channels x H x W`` input;
        ``example_inputs`` defaults to one zero image at ``image_size``. TorchScript is
        deprecated in PyTorch: ``advmim export --torch_export`` (``torch.export``) is the
        supported way to run a segmenter without this library.

        Raises:
            ValueError: For ``method="script"`` (the default of Lightning's method), naming
                the alternatives.
        """
        if method != "trace":
            raise ValueError(
                f"AdvMIMModule.to_torchscript(method={method!r}) is not supported: the "
                "networks and metrics use Python that torch.jit.script cannot compile. Use "
                "model.to_torchscript(method='trace') (traces forward, the eval_network's "
                "softmax for B x in_channels x H x W images at image_size), or torch.export "
                "(advmim export --torch_export)."
            )
        if example_inputs is None and self.example_input_array is None:
            example_inputs = torch.zeros(1, self.in_channels, *self.image_size, device=self.device)
        return super().to_torchscript(file_path, method, example_inputs, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["advmim"] = {"iteration": self.iteration}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore :attr:`iteration`; a fit refuses a checkpoint whose saved counts disagree.

        Raises:
            ValueError: When resuming a fit from a checkpoint whose iteration counts disagree
                (:func:`advmim_lightning.run.checkpoints.iteration_count_conflict`).
        """
        if lightning_private.has_trainer(self) and self.trainer.state.fn == "fit":
            conflict = checkpoints.iteration_count_conflict(checkpoint, self.trainer.ckpt_path)
            if conflict:
                raise ValueError(conflict)
        self.iteration = int(checkpoint.get("advmim", {}).get("iteration", 0))
        self.restored_from_checkpoint = True
        self._mask_generator_iteration = -1
