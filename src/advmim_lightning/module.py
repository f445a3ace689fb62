"""``AdvMIMModule``: the AdvMIM training algorithm and the CTCT / supervised baselines.

This module only *wires* the parts: networks come from :mod:`advmim_lightning.networks`, loss
terms from :mod:`advmim_lightning.losses`, schedules from :mod:`advmim_lightning.schedules` and
3D metrics from :mod:`advmim_lightning.metrics`. ``docs/method.md`` describes the method, its
defaults and where they come from.

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

import copy
import csv
import importlib
import logging
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from advmim_lightning.cuda_graph import GraphedIteration
from advmim_lightning.losses import (
    confidence_weighted_cross_entropy,
    cross_entropy_loss,
    dice_loss,
    lsgan_loss,
    weighted_dice_loss,
)
from advmim_lightning.metrics import METRIC_NAMES, SegmentationMetrics
from advmim_lightning.networks import (
    Discriminator,
    SwinUNet,
    UNet,
    random_block_mask,
    random_init_warning,
)
from advmim_lightning.nonfinite import NonFiniteMonitor, UpdateSkipper, batch_case_ids
from advmim_lightning.resize import zoom_nearest
from advmim_lightning.schedules import ctct_consistency_weight, poly_lr

log = logging.getLogger(__name__)

Method = Literal["advmim", "ctct", "supervised"]
NETWORK_NAMES = ("transformer", "cnn")

#: The published defaults of each method (docs/method.md). ``None`` arguments resolve to these.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "advmim": {
        "lr": 0.05,
        "grad_clip_norm": 5.0,
        "sup_weight": 1.0,
        "cross_teaching_weight": 0.1,
        "cross_teaching_rampup": False,
        "masked_sup_weight": 1.0,
        "masked_pseudo_weight": 1.0,
        "adversarial_weight": 0.001,
        "discriminator_weight": 0.1,
        "forward_batching": "separate",
    },
    "ctct": {
        "lr": 0.01,
        "grad_clip_norm": 0.0,
        "sup_weight": 0.5,
        "cross_teaching_weight": 0.1,
        "cross_teaching_rampup": True,
        "forward_batching": "joint",
    },
    "supervised": {
        "lr": 0.01,
        "grad_clip_norm": 0.0,
        "sup_weight": 0.5,
    },
}


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
        nonfinite_check: ``"raise"`` (default): a non-finite loss term is flagged on the device
            every iteration and checked on logging iterations (``log_every_n_steps``, no host
            sync in between); the error names the iteration range, the offending terms and the
            batches' case ids. ``"skip"``: an iteration whose gradients (after DDP averaging,
            so all ranks agree) are not all finite changes nothing: parameters, momenta and
            batch-norm statistics of all four parts are restored on the device, the iteration
            still counts, and logging iterations warn naming it and its cases and log
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
            iteration (:mod:`advmim_lightning.cuda_graph`). Needs a CUDA device, a single
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
        if method not in METHOD_DEFAULTS:
            raise ValueError(f"method={method!r} is not one of {sorted(METHOD_DEFAULTS)}")
        _check_choice("loss_variant", loss_variant, ("public_code", "paper"))
        if forward_batching is not None:
            _check_choice("forward_batching", forward_batching, ("separate", "joint"))
        _check_choice("discriminator_real", discriminator_real, ("labeled", "unlabeled"))
        _check_choice("eval_network", eval_network, ("transformer", "cnn", "ensemble"))
        _check_choice("eval_interpolation", eval_interpolation, ("nearest", "bilinear"))
        _check_choice("nonfinite_check", nonfinite_check, ("raise", "skip", "off"))
        _check_choice("optimizer_impl", optimizer_impl, ("auto", "for_loop", "foreach", "fused"))
        if compile_networks is not None:
            _check_choice(
                "compile_networks", compile_networks, ("default", "reduce-overhead", "max-autotune")
            )
        if cuda_graph and compile_networks in ("reduce-overhead", "max-autotune"):
            raise ValueError(
                f"cuda_graph=True captures the whole iteration in one CUDA graph; "
                f"compile_networks={compile_networks!r} captures CUDA graphs of its own, and "
                "graphs cannot nest. Use compile_networks='default' (or null) with cuda_graph."
            )
        if max_skipped_in_a_row < 1:
            raise ValueError(f"max_skipped_in_a_row must be >= 1, got {max_skipped_in_a_row}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background + 1), got {num_classes}")
        image_size = _pair(image_size, "image_size")
        if max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if method == "advmim" and any(s % mask_block_size for s in image_size):
            raise ValueError(
                f"image_size={image_size} must be divisible by mask_block_size={mask_block_size}"
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
        defaults = METHOD_DEFAULTS[method]
        unused = [k for k, v in given.items() if v is not None and k not in defaults]
        if unused:
            raise ValueError(
                f"{', '.join(unused)} {'is' if len(unused) == 1 else 'are'} not used by "
                f"method={method!r}; remove {'it' if len(unused) == 1 else 'them'} or choose a "
                "method that uses it"
            )
        resolved = {k: (defaults[k] if given[k] is None else given[k]) for k in defaults}

        self.method: Method = method
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.image_size = image_size
        self.class_names = _class_names(class_names, num_classes)
        self.eval_network = eval_network
        self.cnn = _build_network(cnn, UNet, in_channels=in_channels, num_classes=num_classes)
        self.transformer = _build_network(
            transformer,
            SwinUNet,
            in_channels=in_channels,
            num_classes=num_classes,
            img_size=image_size,
        )
        for name in NETWORK_NAMES:
            _check_network(name, getattr(self, name), num_classes, in_channels, image_size)
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
        self.hparams["cnn"] = _network_spec(self.cnn)
        self.hparams["transformer"] = _network_spec(self.transformer)
        # Loggers record ``hparams_initial``: make it what trains (resolved method defaults, the
        # networks' specs), not the arguments as given (None). ``image_size`` keeps the value
        # given (as the data module's, which Lightning merges with it and compares by type).
        given_size = self._hparams_initial.get("image_size", image_size)
        self._hparams_initial = copy.deepcopy(self._hparams)
        self._hparams_initial["image_size"] = given_size

        #: Completed training iterations (paired batches); saved in checkpoints and in the
        #: state dict (key ``iteration``), so it travels wherever the weights do (e.g. back
        #: from ``ddp_spawn`` workers, which return only the state dict).
        self.iteration = 0
        #: Whether the weights came from an AdvMIMModule checkpoint (set by on_load_checkpoint).
        self.restored_from_checkpoint = False
        self.register_state_dict_post_hook(_save_iteration)
        self.register_load_state_dict_pre_hook(_load_iteration)
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
        parts = self.trained_parts
        clips = [self.cfg["grad_clip_norm"]] * len(parts)
        flags = _SGD_IMPLEMENTATIONS[self.hparams.optimizer_impl]
        optimizers = [
            torch.optim.SGD(
                [{"params": [q for q in part.parameters() if q.requires_grad], "clip_norm": clip}],
                lr=self.cfg["lr"],
                momentum=self.hparams.momentum,
                weight_decay=self.hparams.weight_decay,
                **flags,
            )
            for part, clip in zip(parts, clips, strict=True)
        ]
        # Each optimiser gets a named scheduler that never changes its rate (factor 1): the
        # name is what Lightning's LearningRateMonitor logs (lr-cnn, ..., not lr-SGD-3).
        schedulers = [
            {
                "scheduler": torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0),
                "name": f"lr-{name}",
                "interval": "step",
            }
            for opt, name in zip(optimizers, self.trained_part_names, strict=True)
        ]
        return optimizers, schedulers

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
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
        if mode is not None and fitting and not getattr(self, "_networks_compiled", False):
            for part in self.trained_parts:
                part.compile(mode=mode)
            self._networks_compiled = True

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Lightning calls this inside ``optimizer.step()``. Gradients are never loss-scaled
        # (16-mixed is refused), so the norm is clipped directly: Lightning's own
        # ``clip_gradients`` refuses fused optimisers under mixed precision.
        clip = optimizer.param_groups[0].get("clip_norm", 0.0)
        if clip:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, clip)

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        if self.hparams.get("cuda_graph", False):
            self._check_cuda_graph_trainer()
        precision = getattr(self.trainer, "precision_plugin", None)
        if getattr(precision, "scaler", None) is not None:
            raise ValueError(
                "precision='16-mixed' is not supported: Lightning updates the loss scale after "
                "each of the several optimisers stepped from one backward pass, which unscales "
                "the later ones with the wrong factor. Use precision='bf16-mixed' (or 32)."
            )
        strategy = self.trainer.strategy
        ddp_kwargs = getattr(strategy, "_ddp_kwargs", None)
        if (
            self.uses_masking
            and ddp_kwargs is not None
            and not ddp_kwargs.get("find_unused_parameters", False)
        ):
            start = getattr(strategy, "_start_method", "popen")
            variant = "ddp" if start == "popen" else f"ddp_{start}"
            raise ValueError(
                f"method='advmim' under {type(strategy).__name__} ({variant!r}) needs "
                "find_unused_parameters=True: each iteration runs two backward passes over "
                "different parts (segmenters, then discriminators). Use "
                f"strategy='{variant}_find_unused_parameters_true'"
                + (" (configs/trainer/ddp.yaml does)." if variant == "ddp" else ".")
            )

    def _check_cuda_graph_trainer(self) -> None:
        """Refuse ``cuda_graph=True`` where one captured iteration cannot serve the run."""
        device = self.trainer.strategy.root_device
        if device.type != "cuda":
            raise ValueError(
                f"model.cuda_graph=true captures the training iteration as a CUDA graph and "
                f"needs a CUDA GPU, but this run trains on {device.type!r}. Set "
                "model.cuda_graph=false (the default) or train on a GPU "
                "(trainer.accelerator=gpu)."
            )
        if self.trainer.world_size > 1:
            raise ValueError(
                f"model.cuda_graph=true is not supported with {self.trainer.world_size} "
                "processes: DDP's gradient all-reduce would have to be captured in the graph. "
                "Set model.cuda_graph=false for multi-GPU runs."
            )

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
        weight = self.cfg.get("cross_teaching_weight", 0.0)
        if not self.cfg.get("cross_teaching_rampup", False):
            return weight
        return ctct_consistency_weight(
            self.iteration,
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
                _mix_seed(self.hparams.rng_seed, self.global_rank, self.iteration)
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
        flags = _SGD_IMPLEMENTATIONS[self.hparams.optimizer_impl]
        for optimizer in self.trainer.optimizers:
            for group in optimizer.param_groups:
                group.update(flags)
        self._monitor = NonFiniteMonitor(first_iteration=self.iteration)
        self._skipper = None
        if self.hparams.nonfinite_check == "skip":
            self._skipper = UpdateSkipper(
                self.trained_parts, self.trainer.optimizers, self.hparams.max_skipped_in_a_row
            )
        self._set_learning_rates(self._current_lr())
        self._watch_segmenter_contract("train")
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

    def on_validation_start(self) -> None:
        self._watch_segmenter_contract("eval")

    def on_test_start(self) -> None:
        self._watch_segmenter_contract("eval")

    def on_predict_start(self) -> None:
        self._watch_segmenter_contract("eval")

    def _watch_segmenter_contract(self, mode: str) -> None:
        """Check each segmenter's next output against the contract, once per ``mode``.

        A forward hook (removed after its first call) looks at what the network returns on the
        first batch of training (``"train"``: ``net(x, mask=m)`` for AdvMIM) or evaluation
        (``"eval"``: ``net(x)``): no extra forward pass, nothing on the device. Skipped for
        networks compiled with ``compile_networks`` (a hook would be compiled into the graph).
        """
        if mode in self._contract_checked or getattr(self, "_networks_compiled", False):
            return
        for handle in self._contract_hooks.values():
            handle.remove()
        self._contract_hooks = {}
        for name, net in self.segmenters.items():
            self._contract_hooks[name] = net.register_forward_hook(
                _ContractCheck(self, name, mode), with_kwargs=True
            )

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
        torch.manual_seed(_mix_seed(self.hparams.rng_seed, self.global_rank, self.iteration, 1))
        return None

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        """One iteration: both backward passes, then the four optimiser steps (two: baselines).

        Loss values stay on the device; they are handed to the loggers only on logging steps
        (``trainer.log_every_n_steps``), so the step itself never waits for the GPU.
        """
        _check_training_batch(batch)
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
            terms, total = self._graphed.run(x_l, y, x_u, masks, lr, ct_weight)
            terms = {k: v.detach().clone() for k, v in terms.items()}  # the graph's are reused
            total = total.detach().clone()
            finite = skipper.gradients_finite() if skipper is not None else None
            for opt in optimizers:  # the graph stepped them: count the steps as Lightning does
                opt._on_before_step()
                opt._on_after_step()
        else:
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            out = self._segmenter_losses(x_l, y, x_u, ct_weight, masks)
            total = torch.stack(list(out.weighted.values())).sum()
            terms = out.terms
            self.manual_backward(total)
            if self.uses_masking:
                # The discriminators see detached maps of this forward pass, so their backward
                # may come before the segmenter steps: all four steps follow one finite check.
                disc_terms = self._discriminator_losses(out)
                self.manual_backward(self.cfg["discriminator_weight"] * sum(disc_terms.values()))
                terms.update(disc_terms)
            finite = skipper.gradients_finite() if skipper is not None else None
            for opt in optimizers:  # transformer, CNN, then the discriminators
                opt.step()
        case_ids = batch_case_ids(batch)
        if skipper is not None:
            skipper.restore_unless(finite, self.iteration, case_ids)
        if self.hparams.nonfinite_check == "raise":
            self._monitor.flag(terms, case_ids, self.iteration)

        if self._is_logging_iteration():
            logged: dict[str, Any] = {f"train/{k}": v.detach() for k, v in terms.items()}
            self.check_nonfinite_now()
            if skipper is not None:
                logged["train/skipped_iterations"] = float(skipper.skipped_total)
            logged["train/loss"] = total.detach()
            logged["train/lr"] = lr
            logged["train/iteration"] = float(self.iteration + 1)
            if x_u is not None:
                logged["train/cross_teaching_weight"] = ct_weight
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
            strategy = self.trainer.strategy if self._trainer is not None else None
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
            The unweighted terms by ``<term>_<network>``, the weighted parts of the total, and
            the softmax maps the discriminator step reuses (detached there).
        """
        n_l = x_l.shape[0]
        logits, masked_logits = self._segmenter_forward(x_l, x_u, masks)
        probs = {name: out.float().softmax(1) for name, out in logits.items()}

        cfg = self.cfg
        variant = self.hparams.loss_variant
        terms: dict[str, Tensor] = {}
        weighted: dict[str, Tensor] = {}
        masked_unlabeled_probs: dict[str, Tensor] = {}
        for name, other in (("transformer", "cnn"), ("cnn", "transformer")):
            ce = cross_entropy_loss(logits[name][:n_l], y)
            dice = dice_loss(probs[name][:n_l], y)
            terms[f"sup_ce_{name}"], terms[f"sup_dice_{name}"] = ce, dice
            weighted[f"sup_{name}"] = cfg["sup_weight"] * (ce + dice)
            if x_u is None:
                continue

            # Pseudo-labels and confidences of the *other* network, never differentiated.
            with torch.no_grad():
                confidence, pseudo = probs[other][n_l:].detach().max(1)
            ct = dice_loss(probs[name][n_l:], pseudo)
            terms[f"cross_teaching_{name}"] = ct
            weighted[f"cross_teaching_{name}"] = ct_weight * ct
            if not self.uses_masking:
                continue

            m_logits = masked_logits[name].float()
            m_ce = cross_entropy_loss(m_logits[:n_l], y)
            terms[f"masked_sup_ce_{name}"] = m_ce
            masked_sup = m_ce
            m_probs = m_logits.softmax(1)
            if variant == "paper" or name == "cnn":
                m_dice = dice_loss(m_probs[:n_l], y)
                terms[f"masked_sup_dice_{name}"] = m_dice
                masked_sup = masked_sup + m_dice
            weighted[f"masked_sup_{name}"] = cfg["masked_sup_weight"] * masked_sup

            pl_ce = confidence_weighted_cross_entropy(m_logits[n_l:], pseudo, confidence)
            terms[f"masked_pseudo_ce_{name}"] = pl_ce
            masked_pseudo = pl_ce
            if variant == "paper":
                pl_dice = weighted_dice_loss(m_probs[n_l:], pseudo, confidence)
                terms[f"masked_pseudo_dice_{name}"] = pl_dice
                masked_pseudo = masked_pseudo + pl_dice
            weighted[f"masked_pseudo_{name}"] = cfg["masked_pseudo_weight"] * masked_pseudo

            masked_unlabeled_probs[name] = m_probs[n_l:]
            disc = self._discriminator(name)
            with _frozen(disc):
                adv = lsgan_loss(disc(m_probs[n_l:]), target_is_real=True)
            terms[f"adv_{name}"] = adv
            weighted[f"adv_{name}"] = cfg["adversarial_weight"] * adv
        return SegmenterOutputs(terms, weighted, probs, masked_unlabeled_probs, n_l)

    def _forward_batches(self, x_l: Tensor, x_u: Tensor | None) -> list[Tensor]:
        """The batches each segmenter is called on, in order (see ``forward_batching``)."""
        if x_u is None:
            return [x_l]
        if self.cfg.get("forward_batching") != "separate":
            return [torch.cat([x_l, x_u])]
        return [x_l, x_u]

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
        next_mask = iter(masks)
        parts: dict[str, list[Tensor]] = {name: [] for name in NETWORK_NAMES}
        masked_parts: dict[str, list[Tensor]] = {name: [] for name in NETWORK_NAMES}
        for x in self._forward_batches(x_l, x_u):
            for name, net in self.segmenters.items():
                if self.uses_masking:
                    out, masked = net(x, mask=next(next_mask))
                    masked_parts[name].append(masked)
                else:
                    out = net(x)
                parts[name].append(out)
        logits = {name: _joined(p) for name, p in parts.items()}
        masked_logits = {name: _joined(p) for name, p in masked_parts.items() if p}
        return logits, masked_logits

    def _discriminator(self, network: str) -> nn.Module:
        return self.disc_transformer if network == "transformer" else self.disc_cnn

    def _discriminator_losses(self, out: SegmenterOutputs) -> dict[str, Tensor]:
        """LSGAN discriminator terms on detached maps ("real" per ``discriminator_real``)."""
        n_l, probs, masked_unlabeled_probs = out.n_labeled, out.probs, out.masked_unlabeled_probs
        terms = {}
        for name in NETWORK_NAMES:
            disc = self._discriminator(name)
            real_probs = (
                probs[name][:n_l]
                if self.hparams.discriminator_real == "labeled"
                else (probs[name][n_l:])
            )
            real = lsgan_loss(disc(real_probs.detach()), target_is_real=True)
            fake = lsgan_loss(disc(masked_unlabeled_probs[name].detach()), target_is_real=False)
            terms[f"disc_{name}"] = real + fake
        return terms

    # ------------------------------------------------------------------ evaluation
    def _probabilities(self, x: Tensor) -> dict[str, Tensor]:
        """Softmax of each network (and their mean, ``"ensemble"``) for ``B x C x H x W``."""
        probs = {name: net(x).float().softmax(1) for name, net in self.segmenters.items()}
        probs["ensemble"] = 0.5 * (probs["transformer"] + probs["cnn"])
        return probs

    @torch.no_grad()
    def predict_volume(self, image: Tensor) -> dict[str, Tensor]:
        """Label volumes of a whole case, predicted slice by slice as SSL4MIS evaluates.

        Each slice is resized to ``image_size``, segmented, the argmax taken at network
        resolution and resized back to the slice size. Both resizes use
        ``scipy.ndimage.zoom(order=0)``'s index mapping (:func:`advmim_lightning.resize.
        zoom_nearest`, index gathers on the volume's device); ``eval_interpolation="bilinear"``
        resizes the image bilinearly instead (``align_corners=True``, as the training option),
        the prediction still goes back with the zoom mapping.

        Args:
            image: ``C x D x H x W`` float volume (slices along ``D``).

        Returns:
            ``{"transformer", "cnn", "ensemble"}`` -> ``D x H x W`` int64 label volumes.
        """
        if image.ndim != 4:
            raise ValueError(f"expected a C x D x H x W volume, got shape {tuple(image.shape)}")
        slices = image.movedim(1, 0)  # D x C x H x W
        size = (int(slices.shape[-2]), int(slices.shape[-1]))
        resize = size != tuple(self.image_size)
        bilinear = self.hparams.eval_interpolation == "bilinear"
        out: dict[str, list[Tensor]] = {name: [] for name in (*NETWORK_NAMES, "ensemble")}
        for start in range(0, slices.shape[0], self.hparams.eval_slice_batch):
            chunk = slices[start : start + self.hparams.eval_slice_batch]
            if resize and bilinear:
                chunk = F.interpolate(
                    chunk, size=self.image_size, mode="bilinear", align_corners=True
                )
            elif resize:
                chunk = zoom_nearest(chunk, self.image_size)
            for name, prob in self._probabilities(chunk).items():
                labels = prob.argmax(1)  # B x h x w int64
                out[name].append(zoom_nearest(labels, size) if resize else labels)
        return {name: torch.cat(parts) for name, parts in out.items()}

    def validation_step(self, item: Mapping[str, Any], batch_idx: int) -> dict[str, Tensor]:
        """Score one case; returns the label volumes by network (for panel logging)."""
        predictions = self.predict_volume(item["image"])
        label = item["label"]
        index, spacing = _case_index_and_spacing(item)
        self.val_metrics.update(predictions[self.eval_network], label, index, spacing)
        for name, metric in self.val_dice_per_network.items():
            metric.update(predictions[name], label, index, spacing)
        return predictions

    def on_validation_epoch_end(self) -> None:
        values = {f"val/{k}": v for k, v in self.val_metrics.compute().items()}
        for name, metric in self.val_dice_per_network.items():
            values[f"val/dice_mean_{name}"] = metric.compute()["dice_mean"]
            metric.reset()
        self.val_metrics.reset()
        dice_mean = values.pop("val/dice_mean")
        self.log_dict(values, sync_dist=False)
        self.log("val/dice_mean", dice_mean, prog_bar=True, sync_dist=False)

    def test_step(self, item: Mapping[str, Any], batch_idx: int) -> None:
        predictions = self.predict_volume(item["image"])
        index, spacing = _case_index_and_spacing(item)
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
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "test_metrics.csv"
        names = self.class_names[1:]
        columns = [f"{m}_{c}" for m in METRIC_NAMES for c in names]
        columns += [f"{m}_mean" for m in METRIC_NAMES]
        dataset_ids = self._dataset_case_ids()
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["case_id", *columns])
            for index, values in zip(indices.tolist(), table, strict=True):
                case_id = self._test_case_ids.get(index) or dataset_ids.get(index, str(index))
                row = [float(v) for v in values.flatten()]
                row += [float(values[i].mean()) for i in range(len(METRIC_NAMES))]
                writer.writerow([case_id, *(f"{v:.6g}" for v in row)])
            mean_row = [float(summary[f"{m}_{c}"]) for m in METRIC_NAMES for c in names]
            mean_row += [float(summary[f"{m}_mean"]) for m in METRIC_NAMES]
            writer.writerow(["mean", *(f"{v:.6g}" for v in mean_row)])
        return path

    def _dataset_case_ids(self) -> dict[int, str]:
        datamodule = getattr(self.trainer, "datamodule", None)
        dataset = getattr(datamodule, "test_dataset", None)
        case_ids = getattr(dataset, "case_ids", None)
        return dict(enumerate(case_ids())) if callable(case_ids) else {}

    def predict_step(self, item: Mapping[str, Any], batch_idx: int) -> dict[str, Any]:
        """Predict one case and return its label volume in the input file's array order.

        Returns:
            ``{"case_id", "prediction" (uint8 array, original axis order), "affine", "source",
            "spacing"}``; :class:`~advmim_lightning.callbacks.PredictionWriter` saves it.
        """
        labels = self.predict_volume(item["image"])[self.eval_network]
        prediction = labels.to(torch.uint8).cpu().movedim(0, int(item.get("slice_axis", 0)))
        return {
            "case_id": str(item["case_id"]),
            "prediction": prediction.numpy(),
            "affine": item.get("affine"),
            "source": item.get("source"),
            "spacing": item.get("spacing"),
        }

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
        from advmim_lightning.export import read_checkpoint, refuse_untrusted_classes

        if isinstance(checkpoint_path, (str, Path)):
            checkpoint = read_checkpoint(checkpoint_path, check_classes=False)
            _require_own_networks(checkpoint, checkpoint_path, given=kwargs)
            refuse_untrusted_classes(checkpoint, checkpoint_path, overridden=kwargs)
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
        self.iteration = int(checkpoint.get("advmim", {}).get("iteration", 0))
        self.restored_from_checkpoint = True
        self._mask_generator_iteration = -1


# ---------------------------------------------------------------------- helpers
#: ``torch.optim.SGD`` implementation flags per ``optimizer_impl``.
_SGD_IMPLEMENTATIONS: dict[str, dict[str, bool | None]] = {
    "auto": {"foreach": None, "fused": None},
    "for_loop": {"foreach": False, "fused": None},
    "foreach": {"foreach": True, "fused": None},
    "fused": {"foreach": None, "fused": True},
}


def _save_iteration(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any]
) -> None:
    """State-dict post-hook: store ``module.iteration`` as ``<prefix>iteration`` (int64)."""
    state_dict[prefix + "iteration"] = torch.tensor(module.iteration, dtype=torch.int64)


def _load_iteration(
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: dict[str, Any],
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    """Load pre-hook: take ``<prefix>iteration`` back out (older state dicts have none)."""
    value = state_dict.pop(prefix + "iteration", None)
    if value is not None:
        module.iteration = int(value)
        module._mask_generator_iteration = -1


def _mix_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (splitmix64-style mixing, stable across runs)."""
    state = 0x9E3779B97F4A7C15
    for key in keys:
        state = (state ^ (key & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        state = (state ^ (state >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return state >> 1


def _case_index_and_spacing(item: Mapping[str, Any]) -> tuple[int, Any]:
    """An evaluation item's case index, and its spacing (None when unknown: voxel units)."""
    spacing = item["spacing"] if item.get("spacing_known", True) else None
    return int(item["case_index"]), spacing


def _joined(parts: list[Tensor]) -> Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {list(allowed)}")


def _pair(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    pair = tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{name} must be two positive ints (H, W), got {value!r}")
    return pair  # type: ignore[return-value]


def _class_names(names: list[str] | None, num_classes: int) -> list[str]:
    if names is None:
        return ["background", *(f"class{i}" for i in range(1, num_classes))]
    if len(names) != num_classes:
        raise ValueError(
            f"class_names has {len(names)} entries {list(names)} but num_classes={num_classes}"
        )
    return [str(n) for n in names]


def _network_spec(net: nn.Module) -> dict[str, Any]:
    cls = type(net)
    config = getattr(net, "config", None)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": config}


def _require_own_networks(
    checkpoint: Mapping[str, Any], path: str | Path, given: Mapping[str, Any]
) -> None:
    """Ask for the instance of a stored network from outside the library that is not given."""
    hparams = checkpoint.get("hyper_parameters") or {}
    for name in NETWORK_NAMES:
        spec = hparams.get(name)
        if name in given or not isinstance(spec, Mapping):
            continue
        class_path = str(spec.get("class_path", ""))
        if class_path and not class_path.startswith("advmim_lightning."):
            raise ValueError(
                f"{path} names the class {class_path!r} as its {name} network, from outside "
                "advmim_lightning; networks are never rebuilt from a checkpoint: pass the "
                "instance, built as for training (the weights come from the checkpoint): "
                f"AdvMIMModule.load_from_checkpoint({str(path)!r}, {name}=MyNet(...)). "
                "(ADVMIM_TRUSTED_CLASSES does not rebuild networks; it only lets a checkpoint "
                "you trust name other classes of your packages.)"
            )


def _build_network(
    net: nn.Module | Mapping[str, Any] | None, default: type[nn.Module], **kwargs: Any
) -> nn.Module:
    if net is None:
        return default(**kwargs)
    if isinstance(net, nn.Module):
        return net
    if isinstance(net, Mapping) and "class_path" in net:
        class_path = str(net["class_path"])
        if not class_path.startswith("advmim_lightning."):
            raise ValueError(
                f"refusing to import network class {class_path!r} from a stored spec: only "
                "classes in advmim_lightning are rebuilt automatically. Pass the network "
                "instance yourself (e.g. load_from_checkpoint(path, cnn=MyNet(...)))."
            )
        if net.get("init_args") is None:
            raise ValueError(f"the stored spec of {class_path!r} has no init_args to rebuild it")
        module_name, _, cls_name = class_path.rpartition(".")
        cls = getattr(importlib.import_module(module_name), cls_name)
        return cls(**dict(net["init_args"]))
    raise TypeError(f"expected an nn.Module, a class_path spec or None, got {type(net).__name__}")


def _check_network(
    name: str, net: nn.Module, num_classes: int, in_channels: int, image_size: tuple[int, int]
) -> None:
    found = getattr(net, "num_classes", num_classes)
    if found != num_classes:
        raise ValueError(f"{name} predicts {found} classes but num_classes={num_classes}")
    found = getattr(net, "in_channels", in_channels)
    if found != in_channels:
        raise ValueError(
            f"{name} takes {found} input channels but in_channels={in_channels}; build it with "
            f"in_channels={in_channels} (--model.{name}.init_args.in_channels {in_channels})"
        )
    size = getattr(net, "img_size", None)
    if size is not None and tuple(_pair(size, "img_size")) != tuple(image_size):
        raise ValueError(
            f"{name} is built for img_size={tuple(_pair(size, 'img_size'))} but "
            f"image_size={image_size}; build it with the data's image size"
        )


_TRAINING_BATCH = (
    '{"labeled": {"image": B x C x H x W float, "label": B x H x W int64}, '
    '"unlabeled": {"image": B x C x H x W float}}'
)


def _check_training_batch(batch: Any) -> None:
    """Refuse a training batch that is not the paired dict (cheap: no tensor is read)."""
    labeled = batch.get("labeled") if isinstance(batch, Mapping) else None
    if isinstance(labeled, Mapping) and "image" in labeled and "label" in labeled:
        return
    if isinstance(batch, Mapping):
        found = f"a dict with keys {sorted(map(str, batch))}"
        if isinstance(labeled, Mapping):
            found += f" whose 'labeled' entry has keys {sorted(map(str, labeled))}"
    elif isinstance(batch, (tuple, list)):
        found = f"a {type(batch).__name__} of {len(batch)} entries"
    else:
        found = f"a {type(batch).__name__}"
    raise TypeError(
        f"AdvMIMModule.training_step expects a paired batch {_TRAINING_BATCH} ('unlabeled' "
        f"only left out with method='supervised'), got {found}. AdvMIMDataModule's loader "
        "yields it; a loader of your own must return that dict (a DataLoader with "
        "batch_size=None over a dataset of whole batches, or a collate_fn building it)."
    )


def _describe_output(value: Any) -> str:
    """What a network returned, in words (types and shapes)."""
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        parts = ", ".join(_describe_output(v) for v in value[:4])
        more = ", ..." if len(value) > 4 else ""
        return f"a {type(value).__name__} of {len(value)} ({parts}{more})"
    return f"a {type(value).__name__}"


class _ContractCheck:
    """Forward hook checking a segmenter's first output against the segmenter contract."""

    def __init__(self, module: AdvMIMModule, name: str, mode: str) -> None:
        self.module, self.name, self.mode = module, name, mode

    def __call__(
        self, net: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        module = self.module
        handle = module._contract_hooks.pop(self.name, None)
        if handle is not None:
            handle.remove()
        if not module._contract_hooks:
            module._contract_checked.add(self.mode)
        x = args[0] if args else kwargs.get("x")
        if not isinstance(x, Tensor) or x.ndim != 4:
            return  # not called the way the module calls it; nothing to compare with
        expected = (x.shape[0], module.num_classes, *x.shape[-2:])
        masked = kwargs.get("mask") is not None
        if masked:
            wanted = f"a pair (logits, masked_logits) of tensors of shape {expected}"
            outputs = list(output) if isinstance(output, (tuple, list)) else None
            ok_type = outputs is not None and len(outputs) == 2
            given = f"x of shape {tuple(x.shape)} and mask= (a B x H x W bool mask)"
        else:
            wanted = f"one tensor of logits of shape {expected}"
            outputs = [output]
            ok_type = True
            given = f"x of shape {tuple(x.shape)}"
        ok_type = ok_type and all(isinstance(o, Tensor) for o in outputs or ())
        if ok_type and all(tuple(o.shape) == expected for o in outputs or ()):
            return
        raise (ValueError if ok_type else TypeError)(
            f"The {self.name} network ({type(net).__name__}) breaks the segmenter contract: "
            f"given {given} it returned {_describe_output(output)}; expected {wanted} "
            f"(B x num_classes={module.num_classes} x H x W, the input's resolution). See "
            "'Swapping a network: the segmenter contract' in the README."
        )


@contextmanager
def _frozen(*modules: nn.Module):
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
