"""Non-finite losses and gradients: detected on the device, acted on at logging iterations.

A training iteration never waits for the GPU to say whether its loss was finite. Instead the
checks leave device-side flags behind and the host reads them once per logging iteration
(``trainer.log_every_n_steps``), when Lightning synchronises for the loggers anyway:

- :class:`NonFiniteMonitor` (``nonfinite_check="raise"``) ORs a flag per loss term and per
  trained part (its parameters and float buffers after the update) and raises
  naming the iteration range, the terms or parts and the cases the batches held. The parts are
  checked too because an update can overflow while every loss term is still finite (a huge
  input's gradients, batch-norm statistics): the loss shows it only an iteration later, and a
  checkpoint saved in between would hold the broken weights.
- :class:`UpdateSkipper` (``nonfinite_check="skip"``) makes an iteration whose gradients are
  not all finite leave no trace: parameters, optimiser momenta and module buffers (batch-norm
  statistics) are put back as they were before the iteration, selected on the device with
  ``torch.where``. Gradients are read after DDP has averaged them, so every rank takes the same
  decision without an extra collective.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

#: Prefix of a trained part's flag among the loss terms' (``"part:cnn"``).
_PART_PREFIX = "part:"


def batch_case_ids(batch: Mapping[str, Any]) -> list[str]:
    """The case ids a paired training batch holds (labeled first), where the data names them."""
    return [
        str(case)
        for part in ("labeled", "unlabeled")
        for case in (batch.get(part) or {}).get("case_id", [])
    ]


def _format_cases(case_ids: Iterable[str], limit: int = 20) -> str:
    cases = sorted(set(case_ids))
    shown = ", ".join(cases[:limit])
    more = f" and {len(cases) - limit} more" if len(cases) > limit else ""
    return (shown + more) or "unknown"


def _all_finite(tensors: Sequence[Tensor]) -> Tensor:
    """A 0-d bool tensor on the tensors' device: every element of ``tensors`` is finite."""
    # The max-norm cannot overflow for finite values (the 2-norm can) and keeps NaN.
    norms = torch._foreach_norm(list(tensors), ord=float("inf"))
    return torch.stack([n.float() for n in norms]).isfinite().all()


class NonFiniteMonitor:
    """Flags non-finite loss terms and trained parts on the device; :meth:`check` raises.

    Args:
        first_iteration: The iteration the first window starts at (0, or where a run resumes).
        parts: The trained parts by name, whose parameters and float buffers (batch-norm
            statistics) are checked after every update. They are gathered here, once, so an
            iteration only reduces them: one ``foreach`` max-norm for all parts and one
            ``isfinite`` with the loss terms, no host sync.
    """

    def __init__(
        self, first_iteration: int = 0, parts: Mapping[str, nn.Module] | None = None
    ) -> None:
        tensors = {
            name: [
                *part.parameters(),
                *(b for b in part.buffers() if b.is_floating_point()),
            ]
            for name, part in (parts or {}).items()
        }
        # one flat list, so that one foreach max-norm checks every part; a tensor's flag is
        # read back as its part's
        self._tensors = [t for part in tensors.values() for t in part]
        self._tensor_names = [_PART_PREFIX + name for name, part in tensors.items() for _ in part]
        # (term names, OR of their device flags) per run of iterations with the same terms
        self._windows: list[tuple[list[str], Tensor]] = []
        self._case_ids: list[str] = []
        self._since = first_iteration
        self._last = first_iteration - 1

    @torch.no_grad()
    def flag(self, terms: Mapping[str, Tensor], case_ids: Sequence[str], iteration: int) -> None:
        """OR this iteration's non-finite terms and parts into the flags (no host sync).

        Args:
            terms: The loss terms (flagged where not finite).
            case_ids: The cases the iteration's batches held.
            iteration: The iteration (0-based), after its update.
        """
        names = [*terms, *self._tensor_names]
        values = [v.detach().float() for v in terms.values()]
        if self._tensors:  # the max-norm cannot overflow for finite values and keeps NaN
            values += [n.float() for n in torch._foreach_norm(self._tensors, ord=float("inf"))]
        flags = ~torch.stack(values).isfinite()
        if self._windows and self._windows[-1][0] == names:
            self._windows[-1] = (names, self._windows[-1][1] | flags)
        else:
            self._windows.append((names, flags))
        self._case_ids.extend(case_ids)
        self._last = iteration

    def check(self, reduce: Callable[[Tensor], Tensor] | None = None) -> None:
        """Read the flags (one host sync) and start a new window.

        Args:
            reduce: Combines the flags of all ranks (an all-reduce with ``max`` under DDP), so
                that every rank raises together; None on a single process.

        Raises:
            FloatingPointError: Naming the iteration range, the terms and the case ids (this
                rank's) of the window.
        """
        windows, self._windows = self._windows, []
        case_ids, self._case_ids = self._case_ids, []
        first, self._since = self._since, self._last + 1
        if not windows:  # no iteration since the last check, on every rank alike
            return
        names = [name for window_names, _ in windows for name in window_names]
        flags = torch.cat([window_flags for _, window_flags in windows])
        if reduce is not None:
            flags = reduce(flags.float()) > 0
        if not bool(flags.any()):
            return
        bad = list(dict.fromkeys(n for n, f in zip(names, flags.tolist(), strict=True) if f))
        bad_terms = [n for n in bad if not n.startswith(_PART_PREFIX)]
        bad_parts = [n.removeprefix(_PART_PREFIX) for n in bad if n.startswith(_PART_PREFIX)]
        what = []
        if bad_terms:
            what.append(f"terms {', '.join(bad_terms)}")
        if bad_parts:
            what.append(
                f"weights or batch-norm statistics of {', '.join(bad_parts)} after the update"
                + ("" if bad_terms else " (every loss term was finite: the update overflowed)")
            )
        kind = "loss" if bad_terms else "weights"
        raise FloatingPointError(
            f"non-finite {kind} in iterations {first}..{self._last} (0-based): "
            f"{'; '.join(what)}; batches held cases {_format_cases(case_ids)}. Lower the "
            "learning rate, check those cases for extreme intensities, or log every iteration "
            "(trainer.log_every_n_steps=1) to find the first bad one. "
            "model.nonfinite_check=skip skips such updates instead."
        )


@dataclass
class _Pending:
    iteration: int
    finite: Tensor
    case_ids: list[str] = field(default_factory=list)


class UpdateSkipper:
    """Undo, on the device, every update of an iteration whose gradients are not all finite.

    Usage per iteration: :meth:`snapshot` before the forward pass (batch-norm statistics move
    during it), the backward passes, :meth:`gradients_finite`, the optimiser steps, then
    :meth:`restore_unless`. :meth:`report` reads the decisions at logging iterations.

    The cost is one copy of the trained state per iteration (parameters, momenta, buffers) and a
    ``torch.where`` per tensor, so the option is off by default.

    Args:
        modules: The trained modules (their parameters and buffers are guarded).
        optimizers: Their optimisers (the ``momentum_buffer`` of each parameter is guarded).
        max_skipped_in_a_row: Raise once this many consecutive iterations were skipped (a run
            that diverged for good should stop, not skip forever).

    Raises:
        ValueError: If ``max_skipped_in_a_row < 1``.
    """

    def __init__(
        self,
        modules: Sequence[nn.Module],
        optimizers: Sequence[torch.optim.Optimizer],
        max_skipped_in_a_row: int = 100,
    ) -> None:
        if max_skipped_in_a_row < 1:
            raise ValueError(f"max_skipped_in_a_row must be >= 1, got {max_skipped_in_a_row}")
        self.optimizers = list(optimizers)
        self.state = [
            *(p for m in modules for p in m.parameters() if p.requires_grad),
            *(b for m in modules for b in m.buffers()),
        ]
        self.max_skipped_in_a_row = max_skipped_in_a_row
        self._saved: list[Tensor] = []
        self._saved_momenta: dict[Tensor, Tensor] = {}
        self._pending: list[_Pending] = []
        self.skipped_total = 0
        self._skipped_in_a_row = 0

    def _momenta(self) -> dict[Tensor, Tensor]:
        return {
            p: buf
            for opt in self.optimizers
            for p, state in opt.state.items()
            if (buf := state.get("momentum_buffer")) is not None
        }

    @torch.no_grad()
    def snapshot(self) -> None:
        """Copy the state the iteration may change (device copies, no host sync)."""
        if len(self._saved) != len(self.state):
            self._saved = [t.detach().clone() for t in self.state]
        else:
            torch._foreach_copy_(self._saved, [t.detach() for t in self.state])
        self._saved_momenta = {p: buf.clone() for p, buf in self._momenta().items()}

    @torch.no_grad()
    def gradients_finite(self) -> Tensor:
        """A 0-d bool device tensor: every gradient of every optimiser is finite."""
        grads = [
            p.grad
            for opt in self.optimizers
            for group in opt.param_groups
            for p in group["params"]
            if p.grad is not None
        ]
        if not grads:
            return torch.ones((), dtype=torch.bool, device=self.state[0].device)
        return _all_finite(grads)

    @torch.no_grad()
    def restore_unless(self, finite: Tensor, iteration: int, case_ids: Sequence[str]) -> None:
        """Put the snapshot back where ``finite`` is False; keep the update otherwise.

        A momentum buffer the skipped step created is zeroed: SGD's next step then computes
        ``0 * momentum + (1 - dampening) * d``, which is ``d``, what a first step does, for the
        library's optimisers (``dampening=0``).
        """
        for tensor, saved in zip(self.state, self._saved, strict=True):
            tensor.copy_(torch.where(finite, tensor, saved))
        for param, buf in self._momenta().items():
            saved = self._saved_momenta.get(param)
            buf.copy_(torch.where(finite, buf, saved if saved is not None else 0.0))
        self._pending.append(_Pending(iteration, finite, list(case_ids)))

    def report(self) -> int:
        """Read the decisions since the last report (one host sync); warn about skips.

        Returns:
            The number of iterations skipped since the run (or resume) started.

        Raises:
            FloatingPointError: After ``max_skipped_in_a_row`` consecutive skipped iterations.
        """
        pending, self._pending = self._pending, []
        if not pending:
            return self.skipped_total
        finite = torch.stack([p.finite for p in pending]).tolist()
        skipped = [p for p, ok in zip(pending, finite, strict=True) if not ok]
        longest = 0
        for ok in finite:
            self._skipped_in_a_row = 0 if ok else self._skipped_in_a_row + 1
            longest = max(longest, self._skipped_in_a_row)
        self.skipped_total += len(skipped)
        if skipped:
            iterations = ", ".join(str(p.iteration) for p in skipped)
            cases = _format_cases(c for p in skipped for c in p.case_ids)
            log.warning(
                "skipped %d update(s) with non-finite gradients at iteration(s) %s (0-based); "
                "batches held cases %s",
                len(skipped),
                iterations,
                cases,
            )
        if longest >= self.max_skipped_in_a_row:
            raise FloatingPointError(
                f"{longest} iterations in a row (up to {pending[-1].iteration} at the latest, "
                "0-based) had non-finite gradients and were skipped: training has diverged. "
                "Lower the learning rate or check the data; model.max_skipped_in_a_row="
                f"{self.max_skipped_in_a_row} sets this limit."
            )
        return self.skipped_total


class NonFiniteGuard:
    """A run's non-finite check (``nonfinite_check``), as the training step uses it.

    ``"raise"`` flags terms and parts with a :class:`NonFiniteMonitor`; ``"skip"`` undoes an
    iteration whose gradients are not all finite with an :class:`UpdateSkipper`; ``"off"``
    does nothing. Per iteration: :meth:`before_forward`, the backward passes,
    :meth:`gradients_finite`, the optimiser steps, :meth:`after_step`; :meth:`check` on
    logging iterations and before checkpoints.

    Args:
        mode: ``"raise"``, ``"skip"`` or ``"off"``.
        max_skipped_in_a_row: With ``"skip"``: raise after this many skipped iterations.
    """

    def __init__(self, mode: str = "raise", max_skipped_in_a_row: int = 100) -> None:
        self.mode, self.max_skipped_in_a_row = mode, max_skipped_in_a_row
        self.monitor = NonFiniteMonitor()
        self.skipper: UpdateSkipper | None = None

    def start(
        self,
        parts: Mapping[str, nn.Module],
        optimizers: Sequence[torch.optim.Optimizer],
        first_iteration: int,
    ) -> None:
        """Watch ``parts`` and their optimisers from ``first_iteration`` on (fit start)."""
        self.monitor = NonFiniteMonitor(first_iteration=first_iteration, parts=parts)
        self.skipper = None
        if self.mode == "skip":
            self.skipper = UpdateSkipper(
                list(parts.values()), optimizers, self.max_skipped_in_a_row
            )

    def before_forward(self) -> None:
        """Keep the state an iteration may have to be undone to (batch norm moves in it)."""
        if self.skipper is not None:
            self.skipper.snapshot()

    def gradients_finite(self) -> Tensor | None:
        """Whether all gradients are finite (a device flag), where the mode needs it."""
        return self.skipper.gradients_finite() if self.skipper is not None else None

    def after_step(
        self,
        finite: Tensor | None,
        terms: Mapping[str, Tensor],
        case_ids: Sequence[str],
        iteration: int,
    ) -> None:
        """Undo the update (``"skip"``, where not finite) or flag the terms (``"raise"``)."""
        if self.skipper is not None and finite is not None:
            self.skipper.restore_unless(finite, iteration, case_ids)
        if self.mode == "raise":
            self.monitor.flag(terms, case_ids, iteration)

    @property
    def skipped_total(self) -> int | None:
        """Iterations skipped so far (``"skip"``), else None."""
        return self.skipper.skipped_total if self.skipper is not None else None

    def check(self, reduce: Callable[[Tensor], Tensor] | None = None) -> None:
        """Act on the flags not checked yet (one host sync): raise or report.

        Raises:
            FloatingPointError: As :meth:`NonFiniteMonitor.check` and
                :meth:`UpdateSkipper.report` describe.
        """
        if self.mode == "raise":
            self.monitor.check(reduce)
        if self.skipper is not None:
            self.skipper.report()
