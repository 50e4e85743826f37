"""Keeping non-finite numbers out of the weights: optimizer steps with a NaN/inf loss or gradient are skipped.

One bad batch (an overflow in half precision, a corrupt row, a spike in a reward) would otherwise turn every
weight into NaN in a single AdamW step, and the run would go on training garbage. A skipped step leaves
the weights *and* the optimizer state untouched: the gradients are dropped (set to ``None``), and torch's
and bitsandbytes' optimizers skip parameters without a gradient. The learning-rate schedule still advances.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class NonFiniteStepsError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient norm."""


class NonFiniteGuard:
    """Counts and skips optimizer steps whose loss or gradient norm is NaN or infinite.

    ``check`` is called after the backward pass(es) of a step and before ``optimizer.step()``; it drops the
    gradients of a bad step and returns False. After more than ``max_in_a_row`` bad steps in a row it raises
    :class:`NonFiniteStepsError` (``0``: stop at the first one). ``total`` is logged as
    ``train/nonfinite_steps``; the counts are saved in checkpoints.
    """

    def __init__(self, max_in_a_row: int) -> None:
        self.max_in_a_row = max_in_a_row
        self.total = 0
        self.in_a_row = 0

    @staticmethod
    def is_finite(parameters: Iterable[torch.nn.Parameter], losses: Iterable[torch.Tensor] = ()) -> bool:
        """Whether the gradient norm over ``parameters`` and every one of ``losses`` are finite."""
        grads = [p.grad for p in parameters if p.grad is not None]
        checks = [torch.nn.utils.get_total_norm(grads, norm_type=2.0)] if grads else []
        checks += [loss.detach().float().reshape(()) for loss in losses]
        return bool(torch.isfinite(torch.stack([c.to(checks[0].device) for c in checks])).all()) if checks else True

    def check(self, parameters: Iterable[torch.nn.Parameter], finite: bool, step: int) -> bool:
        """Record whether optimizer step ``step`` is ``finite``; for a bad one drop the gradients of
        ``parameters`` so that the optimizer leaves them (and its state) alone. Returns ``finite``."""
        if finite:
            self.in_a_row = 0
            return True
        for p in parameters:
            p.grad = None
        self.total += 1
        self.in_a_row += 1
        if self.in_a_row > self.max_in_a_row:
            raise NonFiniteStepsError(
                f"{self.in_a_row} optimizer step(s) in a row, the last at step {step}, had a non-finite (NaN or "
                f"infinite) loss or gradient norm; each was skipped, so no weight took a non-finite value "
                f"({self.total} skipped in all). Lower optim.lr, check the data for extreme values, use "
                "trainer.precision: bf16-mixed or 32-true instead of 16-mixed, or raise optim.max_nonfinite_steps "
                "to skip more in a row. See docs/troubleshooting.md#skipped-non-finite-steps"
            )
        return False

    def state_dict(self) -> dict:
        return {"total": self.total, "in_a_row": self.in_a_row}

    def load_state_dict(self, state: dict) -> None:
        self.total, self.in_a_row = int(state["total"]), int(state["in_a_row"])
