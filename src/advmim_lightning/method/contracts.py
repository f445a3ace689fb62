"""What ``AdvMIMModule`` checks of what it is given: networks, batches and the trainer.

- :func:`check_network`: a segmenter's class count, input channels and image size against the
  module's (at construction).
- :class:`ContractWatch`, :class:`ContractCheck`: a one-shot forward hook comparing a
  segmenter's first output with the segmenter contract (docs/python-api.md, "Swapping a
  network: the segmenter contract"); :func:`check_takes_a_mask`: AdvMIM's ``mask=`` argument.
- :func:`check_training_batch`: a training batch is the paired dict.
- :func:`check_fit_trainer`, :func:`check_cuda_graph_trainer`: the trainer can run the
  module's fit (precision, DDP; ``cuda_graph``).

Every refusal says what was given and what would work.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from advmim_lightning.method.config import pair

if TYPE_CHECKING:
    import lightning.pytorch as pl


def check_network(
    name: str, net: nn.Module, num_classes: int, in_channels: int, image_size: tuple[int, int]
) -> None:
    """Refuse a segmenter built for other sizes than the module (where it says its sizes)."""
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
    if size is not None and tuple(pair(size, "img_size")) != tuple(image_size):
        raise ValueError(
            f"{name} is built for img_size={tuple(pair(size, 'img_size'))} but "
            f"image_size={image_size}; build it with the data's image size"
        )


_TRAINING_BATCH = (
    '{"labeled": {"image": B x C x H x W float, "label": B x H x W int64}, '
    '"unlabeled": {"image": B x C x H x W float}}'
)


def check_training_batch(batch: Any, method: str | None = None) -> None:
    """Refuse a training batch that is not the paired dict (cheap: no tensor is read), or
    that lacks the unlabeled images ``method`` trains on (not checked without a method)."""
    labeled = batch.get("labeled") if isinstance(batch, Mapping) else None
    if isinstance(labeled, Mapping) and "image" in labeled and "label" in labeled:
        if method not in (None, "supervised") and "unlabeled" not in batch:
            raise ValueError(
                f"method={method!r} needs unlabeled images but the batch has only "
                f"{sorted(batch)}; set data.require_unlabeled=true and give unlabeled cases"
            )
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


def describe_output(value: Any) -> str:
    """What a network returned, in words (types and shapes)."""
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        parts = ", ".join(describe_output(v) for v in value[:4])
        more = ", ..." if len(value) > 4 else ""
        return f"a {type(value).__name__} of {len(value)} ({parts}{more})"
    return f"a {type(value).__name__}"


class ContractWatch:
    """Checks each segmenter's next output against the segmenter contract, once per mode.

    :meth:`watch` puts a forward hook on every segmenter; the hook (:class:`ContractCheck`)
    looks at what the network returns on the first batch of training (``"train"``:
    ``net(x, mask=m)`` for AdvMIM) or evaluation (``"eval"``: ``net(x)``) and removes itself:
    no extra forward pass, nothing on the device. The watch keeps its own state (the modes
    checked, the hooks still waiting).

    Args:
        num_classes: The classes every segmenter must predict.
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        #: Modes checked (``"train"``, ``"eval"``).
        self.checked: set[str] = set()
        self._hooks: dict[str, Any] = {}

    def watch(self, segmenters: Mapping[str, nn.Module], mode: str) -> None:
        """Check each segmenter's next output in ``mode`` (once per mode)."""
        if mode in self.checked:
            return
        self.remove()
        for name, net in segmenters.items():
            self._hooks[name] = net.register_forward_hook(
                ContractCheck(self, name, mode), with_kwargs=True
            )

    def remove(self) -> None:
        """Remove the hooks still waiting (e.g. before networks are compiled)."""
        for handle in self._hooks.values():
            handle.remove()
        self._hooks = {}

    def done(self, name: str, mode: str) -> None:
        """Called by the hook of ``name``: remove it, and mark ``mode`` once all have run."""
        handle = self._hooks.pop(name, None)
        if handle is not None:
            handle.remove()
        if not self._hooks:
            self.checked.add(mode)


class ContractCheck:
    """Forward hook checking a segmenter's first output against the segmenter contract."""

    def __init__(self, watch: ContractWatch, name: str, mode: str) -> None:
        self.watch, self.name, self.mode = watch, name, mode

    def __call__(
        self, net: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        self.watch.done(self.name, self.mode)
        num_classes = self.watch.num_classes
        x = args[0] if args else kwargs.get("x")
        if not isinstance(x, Tensor) or x.ndim != 4:
            return  # not called the way the module calls it; nothing to compare with
        expected = (x.shape[0], num_classes, *x.shape[-2:])
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
            f"given {given} it returned {describe_output(output)}; expected {wanted} "
            f"(B x num_classes={num_classes} x H x W, the input's resolution). See "
            "'Swapping a network: the segmenter contract' in docs/python-api.md."
        )


def check_takes_a_mask(name: str, net: nn.Module) -> None:
    """Refuse (for AdvMIM) a segmenter whose ``forward`` has no ``mask`` argument.

    Raises:
        TypeError: Naming the network, the contract and the wrapper in docs/python-api.md.
    """
    try:
        parameters = inspect.signature(net.forward).parameters.values()
    except (TypeError, ValueError):  # a forward without a signature: nothing to check
        return
    if any(p.name == "mask" or p.kind is p.VAR_KEYWORD for p in parameters):
        return
    raise TypeError(
        f"method='advmim' calls each segmenter as net(x, mask=m) and the {name} network "
        f"({type(net).__name__}) takes no mask argument (forward{inspect.signature(net.forward)})."
        " The segmenter contract (docs/python-api.md, 'Swapping a network: the segmenter "
        "contract') asks for net(x, mask=m) -> (logits, masked_logits); wrap your network as "
        "shown there (PixelMaskedSegmenter), or train it with method='ctct' or 'supervised'."
    )


def check_fit_trainer(trainer: pl.Trainer, uses_masking: bool, cuda_graph: bool = False) -> None:
    """Refuse a trainer the module cannot fit with.

    Raises:
        ValueError: For ``16-mixed`` precision, and for AdvMIM under DDP without
            ``find_unused_parameters``.
    """
    from advmim_lightning.run import lightning_private  # Lightning only where a trainer is

    if cuda_graph:
        check_cuda_graph_trainer(trainer)

    precision = getattr(trainer, "precision_plugin", None)
    if getattr(precision, "scaler", None) is not None:
        raise ValueError(
            "precision='16-mixed' is not supported: Lightning updates the loss scale after "
            "each of the several optimisers stepped from one backward pass, which unscales "
            "the later ones with the wrong factor. Use precision='bf16-mixed' (or 32)."
        )
    strategy = trainer.strategy
    ddp_kwargs = lightning_private.ddp_kwargs(strategy)
    if (
        uses_masking
        and ddp_kwargs is not None
        and not ddp_kwargs.get("find_unused_parameters", False)
    ):
        start = lightning_private.ddp_start_method(strategy)
        variant = "ddp" if start == "popen" else f"ddp_{start}"
        raise ValueError(
            f"method='advmim' under {type(strategy).__name__} ({variant!r}) needs "
            "find_unused_parameters=True: each iteration runs two backward passes over "
            "different parts (segmenters, then discriminators). Use "
            f"strategy='{variant}_find_unused_parameters_true'"
            + (" (configs/trainer/ddp.yaml does)." if variant == "ddp" else ".")
        )


def cuda_graph_fits(
    trainer: pl.Trainer, compile_networks: str | None, networks: Mapping[str, nn.Module]
) -> bool:
    """Whether ``cuda_graph=None`` (auto) captures the iteration: one CUDA device, one
    process and no DDP wrapper (its gradient hooks would be captured), no loss scaler, no
    compile mode with graphs of its own, and only the library's own networks (a network of
    the user's may read values back to the host, which a capture cannot hold)."""
    from advmim_lightning.run import lightning_private  # Lightning only where a trainer is

    precision = getattr(trainer, "precision_plugin", None)
    return (
        trainer.strategy.root_device.type == "cuda"
        and trainer.world_size == 1
        and lightning_private.ddp_kwargs(trainer.strategy) is None
        and getattr(precision, "scaler", None) is None
        and compile_networks not in ("reduce-overhead", "max-autotune")
        and all(type(net).__module__.startswith("advmim_lightning.") for net in networks.values())
    )


def check_cuda_graph_trainer(trainer: pl.Trainer) -> None:
    """Refuse ``cuda_graph=True`` where one captured iteration cannot serve the run."""
    device = trainer.strategy.root_device
    if device.type != "cuda":
        raise ValueError(
            f"model.cuda_graph=true captures the training iteration as a CUDA graph and "
            f"needs a CUDA GPU, but this run trains on {device.type!r}. Set "
            "model.cuda_graph=false (or null, the default: on where it fits) or train on a GPU "
            "(trainer.accelerator=gpu)."
        )
    if trainer.world_size > 1:
        raise ValueError(
            f"model.cuda_graph=true is not supported with {trainer.world_size} "
            "processes: DDP's gradient all-reduce would have to be captured in the graph. "
            "Set model.cuda_graph=false for multi-GPU runs."
        )
