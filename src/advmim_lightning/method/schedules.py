"""Learning-rate and loss-weight schedules, as pure functions of a Python-int iteration count.

The training module keeps its iteration count as a Python int (one AdvMIM iteration is several
optimiser steps), so these functions take and return plain numbers and never touch a tensor.

- :func:`poly_lr` / :func:`poly_factor`: ``base_lr * (1 - iteration / max_iterations) ** power``
  per iteration (SSL4MIS and the public AdvMIM code, power 0.9). Use :func:`poly_factor` as a
  ``torch.optim.lr_scheduler.LambdaLR`` factor, e.g.
  ``LambdaLR(optimizer, functools.partial(poly_factor, max_iterations=30_000))``.
- :func:`sigmoid_rampup` and :func:`ctct_consistency_weight`: the cross-teaching weight of CTCT
  (Luo et al.), ``0.1 * exp(-5 * (1 - t / 200) ** 2)`` with ``t = min(iteration // 150, 200)``.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["ctct_consistency_weight", "poly_factor", "poly_lr", "sigmoid_rampup"]


def poly_factor(iteration: int, max_iterations: int, power: float = 0.9) -> float:
    """Multiplicative poly learning-rate factor ``(1 - iteration / max_iterations) ** power``.

    Iterations at or past ``max_iterations`` give 0.0.

    Args:
        iteration: iterations done so far, >= 0.
        max_iterations: total iterations of the run, > 0.
        power: poly exponent, >= 0.

    Returns:
        The factor in ``[0, 1]``.

    Raises:
        ValueError: on a negative iteration, a non-positive ``max_iterations`` or a negative power.
    """
    if iteration < 0:
        raise ValueError(f"schedules.py poly_factor: iteration must be >= 0, got {iteration}.")
    if max_iterations <= 0:
        raise ValueError(
            f"schedules.py poly_factor: max_iterations must be > 0, got {max_iterations}."
        )
    if power < 0:
        raise ValueError(f"schedules.py poly_factor: power must be >= 0, got {power}.")
    remaining = max(0.0, 1.0 - iteration / max_iterations)
    return remaining**power


def poly_lr(base_lr: float, iteration: int, max_iterations: int, power: float = 0.9) -> float:
    """Poly learning rate ``base_lr * (1 - iteration / max_iterations) ** power``.

    Args:
        base_lr: initial learning rate.
        iteration: iterations done so far, >= 0.
        max_iterations: total iterations of the run, > 0.
        power: poly exponent, >= 0.

    Returns:
        The learning rate for this iteration (0.0 at or past ``max_iterations``).

    Raises:
        ValueError: see :func:`poly_factor`.
    """
    return base_lr * poly_factor(iteration, max_iterations, power)


def sigmoid_rampup(current: float, rampup_length: float) -> float:
    """Sigmoid-shaped ramp-up ``exp(-5 * (1 - clip(current / rampup_length, 0, 1)) ** 2)``.

    From Laine & Aila (2017) as used in SSL4MIS: about 0.0067 at the start, 1.0 from
    ``current >= rampup_length`` on; 1.0 throughout when ``rampup_length`` is 0.

    Args:
        current: position on the ramp (e.g. ``iteration // 150``).
        rampup_length: length of the ramp, >= 0.

    Returns:
        The ramp value in ``(0, 1]``.

    Raises:
        ValueError: if ``rampup_length`` is negative.
    """
    if rampup_length < 0:
        raise ValueError(
            f"schedules.py sigmoid_rampup: rampup_length must be >= 0, got {rampup_length}."
        )
    if rampup_length == 0:
        return 1.0
    fraction = min(max(current / rampup_length, 0.0), 1.0)
    phase = 1.0 - fraction
    return math.exp(-5.0 * phase * phase)


def ctct_consistency_weight(
    iteration: int,
    weight: float = 0.1,
    rampup_length: int = 200,
    iterations_per_unit: int = 150,
) -> float:
    """CTCT's cross-teaching weight ``weight * sigmoid_rampup(iteration // 150, 200)``.

    Args:
        iteration: iterations done so far, >= 0.
        weight: the weight reached at the end of the ramp (0.1 in CTCT).
        rampup_length: ramp length in units of ``iterations_per_unit`` iterations (200).
        iterations_per_unit: iterations per ramp unit (150 in SSL4MIS).

    Returns:
        The cross-teaching loss weight for this iteration.

    Raises:
        ValueError: on a negative iteration, a non-positive ``iterations_per_unit`` or a
            negative ``rampup_length``.
    """
    if iteration < 0:
        raise ValueError(
            f"schedules.py ctct_consistency_weight: iteration must be >= 0, got {iteration}."
        )
    if iterations_per_unit <= 0:
        raise ValueError(
            "schedules.py ctct_consistency_weight: iterations_per_unit must be > 0, "
            f"got {iterations_per_unit}."
        )
    return weight * sigmoid_rampup(iteration // iterations_per_unit, rampup_length)


def ramp_outlasts_run(
    weight: float, rampup_length: int, rampup_interval: int, max_iterations: int
) -> str | None:
    """A warning when CTCT's ramp-up is longer than the run (the weight is never reached).

    Returns:
        The message naming the weight the run ends at and the ``rampup_interval`` that fits
        the ramp into the run, or None when the ramp fits (or there is no weight to ramp).
    """
    length, interval, iterations = rampup_length, rampup_interval, max_iterations
    if not weight or length * interval <= iterations:
        return None
    last = ctct_consistency_weight(
        iterations - 1, weight=weight, rampup_length=length, iterations_per_unit=interval
    )
    return (
        f"the cross-teaching weight ramps up over rampup_length x rampup_interval = "
        f"{length} x {interval} = {length * interval} iterations (CTCT's 200 x 150 = its "
        f"30000), but max_iterations={iterations}: it ends at {last:.3g}, "
        f"{100 * last / weight:.2g} % of cross_teaching_weight={weight}. To keep the "
        "published ramp's shape in this shorter run, set model.rampup_interval="
        f"{max(iterations // length, 1)} (max_iterations / rampup_length)."
    )


def trainer_stop_iteration(trainer: Any, steps_per_iteration: int) -> int | None:
    """The iteration at which a trainer's own limits end a fit, or None for no limit.

    Args:
        trainer: Its ``max_steps`` (optimiser steps; ``-1``: none), ``max_epochs`` (None or
            ``-1``: none) and ``num_training_batches`` (``inf`` for an endless loader) count.
        steps_per_iteration: Optimiser steps per iteration (4 for AdvMIM, 2 otherwise).
    """
    max_steps, max_epochs = trainer.max_steps, trainer.max_epochs
    iterations_per_epoch = trainer.num_training_batches
    limits = []
    if max_steps is not None and max_steps >= 0:
        limits.append(max_steps // steps_per_iteration)
    if max_epochs is not None and max_epochs >= 0 and math.isfinite(iterations_per_epoch):
        limits.append(int(max_epochs * iterations_per_epoch))
    return min(limits) if limits else None


def fit_start_warnings(settings: Any, iteration: int, stop: int | None) -> list[str]:
    """What a fit should say before it trains: nothing to train, a trainer limit that ends the
    run before ``max_iterations`` (the poly rate then never decays to 0), CTCT's ramp-up
    longer than the run.

    Args:
        settings: The run's :class:`~advmim_lightning.method.config.MethodSettings`.
        iteration: Iterations already trained (a resumed run).
        stop: :func:`trainer_stop_iteration`.
    """
    s, messages = settings, []
    if iteration >= s.max_iterations:
        messages.append(
            f"AdvMIMModule has already trained max_iterations={s.max_iterations} "
            f"iterations (model.iteration={iteration}); fit() has nothing to train and "
            "stops. To train longer, raise max_iterations (the poly learning rate then "
            "decays to 0 at the new value): AdvMIMModule.load_from_checkpoint(path, "
            "max_iterations=...), or model.hparams.max_iterations = ... before fit (also "
            "when resuming with ckpt_path)."
        )
    elif stop is not None and stop < s.max_iterations:
        lr = poly_lr(s.lr, stop, s.max_iterations, s.poly_power)
        messages.append(
            f"the trainer's max_steps / max_epochs end this fit after iteration {stop}, "
            f"before max_iterations={s.max_iterations}: the poly learning rate is then "
            f"{lr:.3g} (of lr={s.lr}), not decayed to 0. Set max_iterations={stop} to train "
            "a complete schedule in this run, or raise the trainer's limits (max_steps counts "
            "optimiser steps: max_iterations x optimizer_steps_per_iteration)."
        )
    if s.cross_teaching_rampup and s.uses_unlabeled:
        weight = s.cross_teaching_weight or 0.0
        ramp = ramp_outlasts_run(weight, s.rampup_length, s.rampup_interval, s.max_iterations)
        if ramp is not None:
            messages.append(ramp)
    return messages
