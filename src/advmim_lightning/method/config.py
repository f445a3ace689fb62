"""The methods' published defaults, the checks of every setting, and the settings object.

:func:`build_settings` is the one way settings come to exist: it refuses a value outside its
allowed range (:func:`check_arguments`), resolves the per-method arguments (``None`` = the
method's default, :func:`resolve_settings`) and returns a frozen :class:`MethodSettings`. The
plain model (:class:`~advmim_lightning.method.model.AdvMIMModel`) and the LightningModule both
read that one object; ``AdvMIMModule.hparams`` is its record (:meth:`MethodSettings.hparams`).
``docs/method.md`` says where each default comes from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Literal

from advmim_lightning.evaluation.case_metrics import check_nsd_options
from advmim_lightning.method.schedules import ctct_consistency_weight, poly_lr

Method = Literal["advmim", "ctct", "supervised"]

#: The two segmenters, in the order every loop over them runs (the order of their RNG draws).
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


def check_arguments(
    *,
    method: str,
    loss_variant: str,
    forward_batching: str | None,
    stream_batching: str,
    discriminator_real: str,
    eval_network: str,
    eval_interpolation: str,
    nonfinite_check: str,
    optimizer_impl: str,
    compile_networks: str | None,
    cuda_graph: bool | None,
    max_skipped_in_a_row: int,
    num_classes: int,
    image_size: int | tuple[int, int] | list[int],
    max_iterations: int,
    mask_ratio: float,
    mask_block_size: int,
) -> tuple[int, int]:
    """Refuse ``AdvMIMModule`` arguments outside their allowed values (as documented there).

    Returns:
        ``image_size`` as an ``(H, W)`` pair.

    Raises:
        ValueError: Naming the argument, the value given and what is allowed.
    """
    if method not in METHOD_DEFAULTS:
        raise ValueError(f"method={method!r} is not one of {sorted(METHOD_DEFAULTS)}")
    check_choice("loss_variant", loss_variant, ("public_code", "paper"))
    if forward_batching is not None:
        check_choice("forward_batching", forward_batching, ("separate", "joint"))
    check_choice("stream_batching", stream_batching, ("batched", "separate"))
    check_choice("discriminator_real", discriminator_real, ("labeled", "unlabeled"))
    check_choice("eval_network", eval_network, ("transformer", "cnn", "ensemble"))
    check_choice("eval_interpolation", eval_interpolation, ("nearest", "bilinear"))
    check_choice("nonfinite_check", nonfinite_check, ("raise", "skip", "off"))
    check_choice("optimizer_impl", optimizer_impl, ("auto", "for_loop", "foreach", "fused"))
    if compile_networks is not None:
        check_choice(
            "compile_networks", compile_networks, ("default", "reduce-overhead", "max-autotune")
        )
    if cuda_graph is True and compile_networks in ("reduce-overhead", "max-autotune"):
        raise ValueError(
            f"cuda_graph=True captures the whole iteration in one CUDA graph; "
            f"compile_networks={compile_networks!r} captures CUDA graphs of its own, and "
            "graphs cannot nest. Use compile_networks='default' (or null) with cuda_graph."
        )
    if max_skipped_in_a_row < 1:
        raise ValueError(f"max_skipped_in_a_row must be >= 1, got {max_skipped_in_a_row}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (background + 1), got {num_classes}")
    size = pair(image_size, "image_size")
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
    if method == "advmim" and any(s % mask_block_size for s in size):
        raise ValueError(
            f"image_size={size} must be divisible by mask_block_size={mask_block_size}"
        )
    return size


def resolve_settings(method: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The settings ``method`` trains with: each given value, or its default where ``None``.

    Args:
        method: A key of :data:`METHOD_DEFAULTS`.
        given: The per-method arguments as given (``None`` = not given).

    Returns:
        One value per setting the method uses (the keys of ``METHOD_DEFAULTS[method]``).

    Raises:
        ValueError: When a setting the method does not use is given.
    """
    defaults = METHOD_DEFAULTS[method]
    unused = [k for k, v in given.items() if v is not None and k not in defaults]
    if unused:
        raise ValueError(
            f"{', '.join(unused)} {'is' if len(unused) == 1 else 'are'} not used by "
            f"method={method!r}; remove {'it' if len(unused) == 1 else 'them'} or choose a "
            "method that uses it"
        )
    return {k: (defaults[k] if given[k] is None else given[k]) for k in defaults}


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {list(allowed)}")


def pair(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    """``(H, W)`` from one int or two; ``ValueError`` unless both are positive."""
    if isinstance(value, int):
        return (value, value)
    pair = tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{name} must be two positive ints (H, W), got {value!r}")
    return pair  # type: ignore[return-value]


def resolve_class_names(names: list[str] | None, num_classes: int) -> list[str]:
    """All class names incl. background: ``names``, or ``background, class1, ...``."""
    if names is None:
        return ["background", *(f"class{i}" for i in range(1, num_classes))]
    if len(names) != num_classes:
        raise ValueError(
            f"class_names has {len(names)} entries {list(names)} but num_classes={num_classes}"
        )
    return [str(n) for n in names]


#: Settings that shape the networks or the metrics: fixed once a model is built.
STRUCTURAL_SETTINGS = (
    "method",
    "num_classes",
    "in_channels",
    "image_size",
    "class_names",
    "discriminator_base_channels",
)


@dataclasses.dataclass(frozen=True)
class MethodSettings:
    """Every setting of a run, validated and resolved (``AdvMIMModule``'s arguments document
    each). Per-method settings the method does not use are ``None``."""

    method: Method = "advmim"
    num_classes: int = 4
    in_channels: int = 1
    image_size: tuple[int, int] = (224, 224)
    class_names: tuple[str, ...] = ()
    max_iterations: int = 30000
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    grad_clip_norm: float = 5.0
    sup_weight: float = 1.0
    cross_teaching_weight: float | None = 0.1
    cross_teaching_rampup: bool | None = False
    rampup_length: int = 200
    rampup_interval: int = 150
    masked_sup_weight: float | None = 1.0
    masked_pseudo_weight: float | None = 1.0
    adversarial_weight: float | None = 0.001
    discriminator_weight: float | None = 0.1
    forward_batching: str | None = "separate"
    stream_batching: str = "batched"
    loss_variant: str = "public_code"
    discriminator_real: str = "labeled"
    mask_ratio: float = 0.7
    mask_block_size: int = 32
    discriminator_base_channels: int = 64
    eval_network: str = "transformer"
    eval_interpolation: str = "nearest"
    eval_slice_batch: int = 16
    nsd_tolerance: float | tuple[float, ...] = 1.0
    nsd_zero_below_dice: float | None = None
    rng_seed: int = 0
    nonfinite_check: str = "raise"
    max_skipped_in_a_row: int = 100
    optimizer_impl: str = "auto"
    channels_last: bool = False
    compile_networks: str | None = None
    cuda_graph: bool | None = None

    @property
    def uses_unlabeled(self) -> bool:
        """Whether the method trains on unlabeled images (not the supervised baseline)."""
        return self.method != "supervised"

    @property
    def uses_masking(self) -> bool:
        """Whether the method runs the masked domain and the discriminators (AdvMIM)."""
        return self.method == "advmim"

    def loss_weights(self) -> dict[str, float | None]:
        """The weights of the segmenter loss terms (what ``objective.segmenter_losses`` reads),
        without building the whole record every iteration."""
        return {
            "sup_weight": self.sup_weight,
            "masked_sup_weight": self.masked_sup_weight,
            "masked_pseudo_weight": self.masked_pseudo_weight,
            "adversarial_weight": self.adversarial_weight,
        }

    def lr_at(self, iteration: int) -> float:
        """The poly learning rate at ``iteration`` (0-based)."""
        return poly_lr(self.lr, iteration, self.max_iterations, self.poly_power)

    def cross_teaching_weight_at(self, iteration: int) -> float:
        """The cross-teaching weight at ``iteration`` (0-based; ramped for CTCT)."""
        weight = self.cross_teaching_weight or 0.0
        if not self.cross_teaching_rampup:
            return weight
        return ctct_consistency_weight(
            iteration,
            weight=weight,
            rampup_length=self.rampup_length,
            iterations_per_unit=self.rampup_interval,
        )

    def hparams(self) -> dict[str, Any]:
        """The settings as plain values (lists, no tuples), leaving out those the method
        does not use: what ``AdvMIMModule.hparams`` and checkpoints record."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in PER_METHOD_SETTINGS and field.name not in METHOD_DEFAULTS[self.method]:
                continue
            out[field.name] = list(value) if isinstance(value, tuple) else value
        return out

    def replace(self, **changes: Any) -> MethodSettings:
        """These settings with ``changes`` applied, checked as :func:`build_settings` checks.

        Raises:
            ValueError: For a structural setting (:data:`STRUCTURAL_SETTINGS`), which the
                built networks fix, an unknown name, or a value :func:`build_settings` refuses.
        """
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(
                f"{', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not a setting of "
                f"AdvMIMModule; the settings are {sorted(names)}"
            )
        for name in STRUCTURAL_SETTINGS:
            if name in changes and _plain(changes[name]) != _plain(getattr(self, name)):
                raise ValueError(
                    f"{name} cannot change once the networks are built (it is "
                    f"{_plain(getattr(self, name))!r}, the edit asks for "
                    f"{_plain(changes[name])!r}): build a new AdvMIMModule({name}=...), or "
                    f"AdvMIMModule.load_from_checkpoint(path, {name}=...) where the weights fit"
                )
        given = self.hparams()
        # Per-method values keep the ones in use unless the edit names them.
        for name in PER_METHOD_SETTINGS:
            given[name] = changes.get(name, given.get(name))
        given.update({k: v for k, v in changes.items() if k not in PER_METHOD_SETTINGS})
        return build_settings(**given)


#: Settings whose default depends on the method (``None`` arguments).
PER_METHOD_SETTINGS = tuple(METHOD_DEFAULTS["advmim"])


def build_settings(**arguments: Any) -> MethodSettings:
    """Check and resolve ``AdvMIMModule``'s arguments (networks aside) into settings.

    Args:
        **arguments: Any field of :class:`MethodSettings`; per-method ones may be ``None``
            (the method's default), ``class_names`` may be ``None`` (``class1 ...``).

    Returns:
        The frozen settings.

    Raises:
        ValueError: Naming the argument, the value given and what is allowed.
    """
    defaults = {f.name: f.default for f in dataclasses.fields(MethodSettings)}
    unknown = sorted(set(arguments) - set(defaults))
    if unknown:
        raise ValueError(f"unknown settings {unknown}; the settings are {sorted(defaults)}")
    values = {**defaults, **{k: None for k in PER_METHOD_SETTINGS}, **arguments}
    method = values["method"]
    values["image_size"] = check_arguments(
        **{name: values[name] for name in _CHECKED},
    )
    given = {name: values[name] for name in PER_METHOD_SETTINGS}
    resolved = resolve_settings(method, given)
    for name in PER_METHOD_SETTINGS:
        values[name] = resolved.get(name)
    names = values["class_names"] or None
    values["class_names"] = tuple(resolve_class_names(names, values["num_classes"]))
    for name in ("eval_slice_batch", "rampup_length", "rampup_interval"):
        if isinstance(values[name], bool) or not isinstance(values[name], int) or values[name] < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {values[name]!r}")
    tolerance = values["nsd_tolerance"]
    tolerances, _ = check_nsd_options(
        tolerance, values["nsd_zero_below_dice"], values["num_classes"], "AdvMIMModule"
    )
    per_class = not isinstance(tolerance, (int, float))
    values["nsd_tolerance"] = tolerances if per_class else float(tolerance)
    return MethodSettings(**values)


_CHECKED = (
    "method",
    "loss_variant",
    "forward_batching",
    "stream_batching",
    "discriminator_real",
    "eval_network",
    "eval_interpolation",
    "nonfinite_check",
    "optimizer_impl",
    "compile_networks",
    "cuda_graph",
    "max_skipped_in_a_row",
    "num_classes",
    "image_size",
    "max_iterations",
    "mask_ratio",
    "mask_block_size",
)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


class SettingsRecord(dict):
    """``AdvMIMModule.hparams``: a model's settings (and network specs) as a dict with
    attribute access. An edit goes through ``model.edit_settings`` (the settings' checks) and
    takes effect, or is refused with their message; nothing is recorded that does not train.

    Args:
        model: The :class:`~advmim_lightning.method.model.AdvMIMModel` whose settings these are.
        before_edit: Called before an edit (may refuse it by raising).
        after_edit: Called after an edit took effect.
    """

    def __init__(
        self,
        model: Any,
        before_edit: Callable[[], None] | None = None,
        after_edit: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(model.settings_record())
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_hooks", (before_edit, after_edit))

    def __reduce__(self) -> tuple[Any, ...]:  # copies and pickles are plain dicts
        return (dict, (dict(self),))

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as err:
            raise AttributeError(key) from err

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        before, after = self._hooks
        if before is not None:
            before()
        self._model.edit_settings(dict(*args, **kwargs))
        dict.clear(self)
        dict.update(self, self._model.settings_record())
        if after is not None:
            after()

    def __setitem__(self, key: str, value: Any) -> None:
        self.update({key: value})

    def __setattr__(self, key: str, value: Any) -> None:
        self.update({key: value})

    def __ior__(self, other: Any) -> SettingsRecord:  # type: ignore[override]
        self.update(other)
        return self

    def setdefault(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        if key not in self:
            self.update({key: default})
        return self[key]

    def __delitem__(self, key: str) -> None:
        raise ValueError(f"hparams.{key} is a setting of the run and cannot be removed")

    def clear(self) -> None:
        raise ValueError("hparams are the settings of the run and cannot be removed")

    def popitem(self) -> tuple[str, Any]:
        raise ValueError("hparams are the settings of the run and cannot be removed")

    def pop(self, key: str, *default: Any) -> Any:  # type: ignore[override]
        raise ValueError(f"hparams.{key} is a setting of the run and cannot be removed")
