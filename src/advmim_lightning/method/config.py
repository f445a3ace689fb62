"""The methods' published defaults and the checks of ``AdvMIMModule``'s arguments.

:func:`check_arguments` refuses an argument outside its allowed values before anything is
built; :func:`resolve_settings` turns the per-method arguments (``None`` = the method's
default) into the settings a run trains with (``AdvMIMModule.cfg``, also stored in
``hparams``). ``docs/method.md`` says where each default comes from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

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
    discriminator_real: str,
    eval_network: str,
    eval_interpolation: str,
    nonfinite_check: str,
    optimizer_impl: str,
    compile_networks: str | None,
    cuda_graph: bool,
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
    check_choice("discriminator_real", discriminator_real, ("labeled", "unlabeled"))
    check_choice("eval_network", eval_network, ("transformer", "cnn", "ensemble"))
    check_choice("eval_interpolation", eval_interpolation, ("nearest", "bilinear"))
    check_choice("nonfinite_check", nonfinite_check, ("raise", "skip", "off"))
    check_choice("optimizer_impl", optimizer_impl, ("auto", "for_loop", "foreach", "fused"))
    if compile_networks is not None:
        check_choice(
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
