"""``AdvMIMModule``: Lightning's wiring of :class:`~advmim_lightning.method.model.AdvMIMModel`.

The plain-torch model owns the networks, the settings and an iteration's loss terms; this
module adds the optimisers, the schedules, the iteration count (one iteration = one paired
batch = 4 optimiser steps for AdvMIM, 2 for the baselines; stored once, with the weights),
logging and the evaluation steps. ``docs/architecture.md`` says where each part lives.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from advmim_lightning.evaluation.evaluator import Evaluator
from advmim_lightning.method import config, contracts, optim, records
from advmim_lightning.method.config import NETWORK_NAMES, Method, MethodSettings
from advmim_lightning.method.cuda_graph import GraphedIteration
from advmim_lightning.method.model import AdvMIMModel
from advmim_lightning.method.nonfinite import NonFiniteGuard, batch_case_ids
from advmim_lightning.method.randomness import IterationRandomness
from advmim_lightning.method.schedules import (
    fit_start_warnings,
    trainer_stop_iteration,
)
from advmim_lightning.networks import random_init_warning
from advmim_lightning.run import checkpoints, lightning_private

__all__ = ["AdvMIMModule"]

log = logging.getLogger(__name__)


class AdvMIMModule(checkpoints.SafeLoading, pl.LightningModule):
    """CNN-Transformer cross teaching with AdvMIM's masked domain and adversarial loss.

    ``AdvMIMModule()`` works as it is (UNet and Swin-UNet "tiny lite" at 224 x 224, 4 classes,
    the public code's AdvMIM defaults). Arguments that default to ``None`` take the method's
    value (``METHOD_DEFAULTS`` in :mod:`advmim_lightning.method.config`); ``hparams`` records
    the resolved settings, and an edit of ``hparams`` takes effect (or is refused).
    ``docs/method.md`` explains every setting.

    Args:
        cnn: The CNN segmenter (an ``nn.Module`` keeping the segmenter contract of
            ``docs/python-api.md``, or a stored ``{"class_path", "init_args"}`` spec of a class
            in ``advmim_lightning``). Default: :class:`~advmim_lightning.networks.UNet`.
        transformer: The transformer segmenter, same contract. Default:
            :class:`~advmim_lightning.networks.SwinUNet` at ``image_size``.
        num_classes: Classes including background.
        in_channels: Input channels of the images.
        image_size: Network input size ``(H, W)``; evaluation resizes every slice to it.
        class_names: Names of all classes incl. background (metric names ``val/dice_<name>``);
            default: the data module's, else ``class1 ...``.
        method: ``"advmim"``, ``"ctct"`` (Luo et al.) or ``"supervised"`` (labeled only).
        max_iterations: Training iterations (paired batches); the poly rate reaches 0 there.
        lr: Base learning rate of every SGD (AdvMIM 0.05, others 0.01).
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        poly_power: Exponent of the poly schedule ``lr * (1 - it / max_iterations) ** power``.
        grad_clip_norm: Gradient-norm clip per network (AdvMIM 5, others 0 = none).
        sup_weight: Weight of the supervised ``CE + Dice`` (AdvMIM 1, others 0.5).
        cross_teaching_weight: Weight of the cross-teaching Dice on unlabeled images (0.1).
        cross_teaching_rampup: Ramp that weight as CTCT does (CTCT: on, AdvMIM: off).
        rampup_length: Length of the ramp-up in ramp units (200).
        rampup_interval: Iterations per ramp unit (150).
        masked_sup_weight: AdvMIM: weight of the masked domain's supervised loss (1).
        masked_pseudo_weight: AdvMIM: weight of the confidence-weighted pseudo-label loss (1).
        adversarial_weight: AdvMIM: weight of the LSGAN generator term (0.001).
        discriminator_weight: AdvMIM: weight of the discriminator loss (0.1).
        forward_batching: ``"separate"`` (AdvMIM: labeled and unlabeled batches in separate
            forward calls) or ``"joint"`` (CTCT: one call on both).
        stream_batching: ``"batched"`` (default): each segmenter runs once per iteration on
            all its calls' batches together, batch norm keeping each call's statistics (equal
            to the separate calls up to rounding and dropout draws; docs/speed.md), or
            ``"separate"``: one call per batch, in the public code's order.
        loss_variant: ``"public_code"`` or ``"paper"`` (masked ``CE + Dice`` for both networks).
        discriminator_real: ``"labeled"`` (public code) or ``"unlabeled"`` images are "real".
        mask_ratio: Fraction of mask blocks masked (0.7).
        mask_block_size: Side of a mask block in pixels (32).
        discriminator_base_channels: Width of the first discriminator layer (64).
        eval_network: ``"transformer"``, ``"cnn"`` or ``"ensemble"``: what evaluation reports.
        eval_interpolation: ``"nearest"`` (SSL4MIS) or ``"bilinear"`` resizing at evaluation.
        eval_slice_batch: Slices predicted at once during evaluation.
        nsd_tolerance: Normalised surface Dice tolerance (mm where spacing is known), one
            value or one per foreground class (published ACDC: ``[5, 3, 3]``).
        nsd_zero_below_dice: Score NSD 0 where a class's Dice is below this (published: 0.2);
            None keeps the NSD as measured.
        rng_seed: Seed of masks, dropout and drop path, keyed by (rank, iteration).
        nonfinite_check: ``"raise"``, ``"skip"`` (undo an update with non-finite gradients)
            or ``"off"`` (docs/reliability.md).
        max_skipped_in_a_row: With ``"skip"``: raise after this many skipped iterations.
        optimizer_impl: SGD kernels: ``"auto"``, ``"for_loop"``, ``"foreach"`` or ``"fused"``.
        channels_last: Channels-last weights and images (faster cuDNN convolutions).
        compile_networks: ``torch.compile`` mode of the networks when fitting, or None.
        cuda_graph: Capture the whole iteration as one CUDA graph (docs/speed.md). None
            (default): wherever the fit trains the library's own networks on one CUDA GPU in
            one process without DDP (not with compile modes that capture graphs themselves);
            a batch whose shapes differ from the captured one then trains eagerly. True:
            required (refused elsewhere); False: the eager step always.

    Raises:
        ValueError: On an unknown method, an argument the method does not use, or sizes and
            class counts that disagree between the module and its networks.
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
        stream_batching: Literal["batched", "separate"] = "batched",
        loss_variant: Literal["public_code", "paper"] = "public_code",
        discriminator_real: Literal["labeled", "unlabeled"] = "labeled",
        mask_ratio: float = 0.7,
        mask_block_size: int = 32,
        discriminator_base_channels: int = 64,
        eval_network: Literal["transformer", "cnn", "ensemble"] = "transformer",
        eval_interpolation: Literal["nearest", "bilinear"] = "nearest",
        eval_slice_batch: int = 16,
        nsd_tolerance: float | list[float] = 1.0,
        nsd_zero_below_dice: float | None = None,
        rng_seed: int = 0,
        nonfinite_check: Literal["raise", "skip", "off"] = "raise",
        max_skipped_in_a_row: int = 100,
        optimizer_impl: Literal["auto", "for_loop", "foreach", "fused"] = "auto",
        channels_last: bool = False,
        compile_networks: Literal["default", "reduce-overhead", "max-autotune"] | None = None,
        cuda_graph: bool | None = None,
    ) -> None:
        super().__init__()
        arguments = {k: v for k, v in locals().items() if k not in ("self", "cnn", "transformer")}
        arguments.pop("__class__", None)
        self.model = AdvMIMModel(config.build_settings(**arguments), cnn, transformer)
        self.automatic_optimization = False
        self._class_names_given = class_names is not None
        self._graphed: GraphedIteration | None = None  # cuda_graph's runner (train start)
        self._graph_fit = False  # whether this fit captures (cuda_graph, resolved at setup)
        self.randomness = IterationRandomness(self.settings.rng_seed)
        self.save_hyperparameters(ignore=["cnn", "transformer"])
        self._record_settings()

        #: Completed training iterations (paired batches): the run's one count, stored once,
        #: with the weights (state-dict key ``iteration``); the data stream starts from it.
        self.iteration = 0
        #: Whether the weights came from an AdvMIMModule checkpoint (set by on_load_checkpoint).
        self.restored_from_checkpoint = False
        self.register_state_dict_post_hook(checkpoints.save_model_state)
        self.register_load_state_dict_pre_hook(checkpoints.load_model_state)
        self.contract_watch = contracts.ContractWatch(self.settings.num_classes)
        self.nonfinite = NonFiniteGuard()  # built for the run's settings at train start

    # ------------------------------------------------------------------ settings
    @property
    def settings(self) -> MethodSettings:
        """The run's settings (frozen; edit them through ``hparams``)."""
        return self.model.settings

    def _record_settings(self) -> None:
        """Make ``hparams``, what loggers record, the seeds and the metrics follow the settings
        (again after each accepted edit of ``hparams``)."""
        self._hparams = config.SettingsRecord(self.model, self._before_edit, self._record_settings)
        lightning_private.set_hparams_initial(self, dict(self._hparams))
        self.randomness.rng_seed = self.settings.rng_seed
        self.evaluator = Evaluator.for_settings(self.settings, NETWORK_NAMES)

    def _before_edit(self) -> None:
        if self._graphed is not None and self._graphed.graph is not None:
            raise ValueError("the settings cannot change while a captured CUDA graph trains")

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # a copy or unpickled module: hparams edit its own model
        self._record_settings()

    # ------------------------------------------------------------------ the model's parts
    @property
    def cnn(self) -> nn.Module:
        return self.model.cnn

    @property
    def transformer(self) -> nn.Module:
        return self.model.transformer

    @property
    def class_names(self) -> list[str]:
        return list(self.settings.class_names)

    @property
    def optimizer_steps_per_iteration(self) -> int:
        """Optimiser steps (and so Lightning ``global_step`` increments) per iteration."""
        return len(self.model.trained_parts)

    def forward(self, x: Tensor) -> Tensor:
        """``B x num_classes x H x W`` probabilities of ``eval_network`` for ``x``."""
        return self.model(x)

    def predict_volume(self, image: Tensor) -> dict[str, Tensor]:
        """Label volumes of a ``C x D x H x W`` case by network (see ``AdvMIMModel``)."""
        return self.model.predict_volume(image)

    # ------------------------------------------------------------------ optimisers, schedules
    def configure_optimizers(self) -> tuple[list[torch.optim.Optimizer], list[dict[str, Any]]]:
        """One SGD per trained part (the poly rate is set by hand each iteration), named for
        ``LearningRateMonitor`` (``lr-transformer``, ``lr-cnn``, ``lr-disc_*``)."""
        s = self.settings
        return optim.build_optimizers(
            self.model.trained_parts,
            self.model.trained_part_names,
            lr=s.lr,
            momentum=s.momentum,
            weight_decay=s.weight_decay,
            clip_norm=s.grad_clip_norm,
            impl=s.optimizer_impl,
        )

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        optim.clip_gradients(optimizer)  # Lightning calls this inside optimizer.step()

    def _set_learning_rates(self, lr: float) -> None:
        optim.update_groups(self.trainer.optimizers, lr=lr, clip_norm=self.settings.grad_clip_norm)

    # ------------------------------------------------------------------ fit hooks
    def configure_model(self) -> None:
        """Memory layout (every stage) and compilation (fit only) of the trained parts."""
        fitting = lightning_private.has_trainer(self) and self.trainer.state.fn == "fit"
        compile_now = fitting and self.settings.compile_networks is not None
        compile_now = compile_now and not getattr(self, "_compiled", False)
        if compile_now:
            self.contract_watch.remove()
            self.contract_watch.checked |= {"train", "eval"}  # a hook would be compiled in
            self._compiled = True
        self.model.apply_speed_options(compile_now)

    def setup(self, stage: str) -> None:
        if not self._class_names_given:
            self._take_the_data_class_names()
        if stage == "fit":
            s = self.settings
            contracts.check_fit_trainer(self.trainer, s.uses_masking, s.cuda_graph is True)
            auto = s.cuda_graph is None and contracts.cuda_graph_fits(
                self.trainer, s.compile_networks, self.model.segmenters
            )
            self._graph_fit = s.cuda_graph is True or auto

    def _take_the_data_class_names(self) -> None:
        """Name the metrics after the data module's classes when none were given."""
        names = getattr(getattr(self.trainer, "datamodule", None), "class_names", None)
        if isinstance(names, (list, tuple)) and len(names) == self.settings.num_classes:
            record = {**self.settings.hparams(), "class_names": [str(n) for n in names]}
            self.model.settings = config.build_settings(**record)
            self._record_settings()

    def on_fit_start(self) -> None:
        """Keep torch's generator states (given back when fit returns); warn (rank 0) when a
        fresh fit starts a Swin-T sized Swin-UNet from random weights."""
        self.randomness.keep_global_state()
        if self.trainer.ckpt_path is not None or self.restored_from_checkpoint:
            return
        message = random_init_warning(self.transformer)
        if message is not None and self.global_rank == 0:
            log.warning("%s", message)

    def on_train_start(self) -> None:
        s = self.settings
        self.train()  # a network left in eval mode would train without dropout
        # a resumed optimiser brings its saved implementation flags: apply the current ones
        optim.update_groups(self.trainer.optimizers, **optim.SGD_IMPLEMENTATIONS[s.optimizer_impl])
        self.nonfinite = NonFiniteGuard(s.nonfinite_check, s.max_skipped_in_a_row)
        self.nonfinite.start(
            self.model.named_trained_parts, self.trainer.optimizers, self.iteration
        )
        self._set_learning_rates(self.settings.lr_at(self.iteration))
        self.contract_watch.watch(self.model.segmenters, "train")
        self._graphed = None
        if self._graph_fit:
            loss, device = self.model.iteration_losses, self.device
            optimizers = self.trainer.optimizers
            self._graphed = GraphedIteration(loss, optimizers, device, device.type == "cuda")
        stop = trainer_stop_iteration(self.trainer, self.optimizer_steps_per_iteration)
        for message in fit_start_warnings(s, self.iteration, stop):
            rank_zero_warn(message)
        if self.iteration >= s.max_iterations:
            self.trainer.should_stop = True

    def on_fit_end(self) -> None:
        self.randomness.restore_global_state()  # the steps re-seeded torch's generators

    def on_validation_start(self) -> None:
        self.contract_watch.watch(self.model.segmenters, "eval")

    on_test_start = on_predict_start = on_validation_start

    # ------------------------------------------------------------------ training
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        if self.iteration >= self.settings.max_iterations:
            self.trainer.should_stop = True
            return -1
        self.randomness.seed_global(self.global_rank, self.iteration)
        return None

    def mask_generator(self) -> torch.Generator:
        """The masked domain's generator on this device, seeded for the current iteration."""
        return self.randomness.mask_generator(self.device, self.global_rank, self.iteration)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        """One iteration: the model's losses, both backward passes, every optimiser step.

        Loss values stay on the device; loggers get them on logging iterations only.
        """
        s = self.settings
        contracts.check_training_batch(batch, s.method)
        x_l, y = self._layout(batch["labeled"]["image"]), batch["labeled"]["label"]
        x_u = self._layout(batch["unlabeled"]["image"]) if s.uses_unlabeled else None
        lr = s.lr_at(self.iteration)
        ct_weight = s.cross_teaching_weight_at(self.iteration) if x_u is not None else 0.0
        optimizers = self.optimizers()
        self._set_learning_rates(lr)
        self.nonfinite.before_forward()
        masks = self.model.draw_masks(x_l, x_u, self.mask_generator())
        graphed = self._graphed
        if graphed is not None and s.cuda_graph is None and not graphed.fits(x_l, y, x_u, masks):
            graphed = None  # auto: a batch of other shapes (a last, smaller one) trains eagerly
        if graphed is not None:
            terms, total = graphed.run(x_l, y, x_u, masks, lr, ct_weight)
            finite = self.nonfinite.gradients_finite()
            for opt in optimizers:  # the graph stepped them: count the steps as Lightning does
                lightning_private.count_optimizer_step(opt)
        else:
            # after a capture, the graph's gradient tensors must stay the parameters' own
            captured = self._graphed is not None and self._graphed.graph is not None
            for opt in optimizers:
                opt.zero_grad(set_to_none=not captured)
            losses = self.model.iteration_losses(x_l, y, x_u, masks, ct_weight)
            self.manual_backward(losses.segmenter_total)
            if losses.discriminator_total is not None:
                self.manual_backward(losses.discriminator_total)
            terms, total = losses.terms, losses.segmenter_total
            finite = self.nonfinite.gradients_finite()
            for opt in optimizers:  # transformer, CNN, then the discriminators
                opt.step()
        self.nonfinite.after_step(finite, terms, batch_case_ids(batch), self.iteration)
        if self._is_logging_iteration():
            self.check_nonfinite_now()
            ct_logged = ct_weight if x_u is not None else None
            skipped = self.nonfinite.skipped_total
            logged = records.training_values(terms, total, lr, self.iteration, ct_logged, skipped)
            self.log_dict(logged, on_step=True, on_epoch=False, batch_size=x_l.shape[0])
        self.iteration += 1
        self._set_learning_rates(s.lr_at(self.iteration))  # the next one's: lr monitors read it
        if self.iteration >= s.max_iterations:
            self.trainer.should_stop = True  # validated and checkpointed even mid-epoch

    def _layout(self, images: Tensor) -> Tensor:
        if self.settings.channels_last:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def _is_logging_iteration(self) -> bool:
        every = max(int(getattr(self.trainer, "log_every_n_steps", 1) or 1), 1)
        done = self.iteration + 1
        return done % every == 0 or done == self.settings.max_iterations

    def check_nonfinite_now(self) -> None:
        """Act on the non-finite flags not checked yet (one host sync; all DDP ranks agree).

        Raises:
            FloatingPointError: As ``nonfinite_check`` describes.
        """
        trainer = self.trainer if lightning_private.has_trainer(self) else None
        self.nonfinite.check(lightning_private.max_over_ranks(trainer))

    # ------------------------------------------------------------------ evaluation
    def validation_step(
        self, item: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Tensor]:
        """Score one case; returns the label volumes by network (for panel logging)."""
        checked = self.evaluator.check(item, "validation", batch_idx)
        predictions = self.predict_volume(item["image"])
        evaluated = self.settings.eval_network
        self.evaluator.validation_case(predictions, item, checked, evaluated, dataloader_idx)
        return predictions

    def on_validation_epoch_end(self) -> None:
        values = self.evaluator.validation_values(len(self.trainer.num_val_batches))
        dice_mean = values.pop("val/dice_mean", None)  # the first loader's, where it scored
        self.log_dict(values, sync_dist=False, add_dataloader_idx=False)
        if dice_mean is not None:
            self.log("val/dice_mean", dice_mean, prog_bar=True, add_dataloader_idx=False)

    def test_step(self, item: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        checked = self.evaluator.check(item, "test", batch_idx)
        predictions = self.predict_volume(item["image"])
        evaluated = self.settings.eval_network
        self.evaluator.test_case(predictions, item, checked, evaluated, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        loaders = len(self.trainer.num_test_batches)
        self.log_dict(
            self.evaluator.test_values(loaders), sync_dist=False, add_dataloader_idx=False
        )
        # trainer.log_dir broadcasts from rank 0: every rank must ask for it, or DDP hangs
        out_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        dataset = getattr(getattr(self.trainer, "datamodule", None), "test_dataset", None)
        case_ids = getattr(dataset, "case_ids", None)
        ids = dict(enumerate(case_ids())) if callable(case_ids) else {}
        write = self.trainer.is_global_zero
        for path in self.evaluator.write_test_tables(out_dir, loaders, ids, write=write):
            log.info("per-case test metrics written to %s", path)

    def predict_step(self, item: Mapping[str, Any], batch_idx: int) -> dict[str, Any]:
        """Predict one case: ``{"case_id", "prediction", "affine", "source", "spacing"}`` for
        :class:`~advmim_lightning.evaluation.prediction_writer.PredictionWriter`."""
        self.evaluator.check(item, "prediction", batch_idx)
        labels = self.predict_volume(item["image"])[self.settings.eval_network]
        return records.prediction_record(item, labels)

    # ------------------------------------------------------------------ checkpoints
    def to_torchscript(  # type: ignore[override]
        self,
        file_path: str | Path | None = None,
        method: str | None = "script",
        example_inputs: Any | None = None,
        **kwargs: Any,
    ) -> Any:
        """TorchScript of :meth:`forward` by tracing; ``method="script"`` is refused."""
        if method != "trace":
            raise ValueError(
                f"AdvMIMModule.to_torchscript(method={method!r}) is not supported: the "
                "networks use Python that torch.jit.script cannot compile. Use "
                "method='trace' (forward: the eval_network's softmax at image_size), or "
                "torch.export (advmim export --torch_export)."
            )
        if example_inputs is None and self.example_input_array is None:
            s = self.settings
            example_inputs = torch.zeros(1, s.in_channels, *s.image_size, device=self.device)
        return super().to_torchscript(file_path, method, example_inputs, **kwargs)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.restored_from_checkpoint = True
