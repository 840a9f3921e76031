"""The wall-clock budget of a training run (``--max_train_seconds``).

:class:`BudgetClock` measures the share of the budget spent, agreed on by all ranks;
:class:`TimeBudgetCallback` stops training once it is spent. The trainer's learning-rate schedule
reads the same clock, so a run cut short by the clock still ends fully decayed.
"""

from __future__ import annotations

import logging
import time

import torch
import torch.distributed as dist
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

# The clock every BudgetClock reads (tests replace it to simulate a slow machine).
now = time.perf_counter


class BudgetClock:
    """Share of a wall-clock budget spent, agreed on by all ranks.

    ``spent``: seconds already spent before this clock was created (a resumed run continues the
    interrupted run's budget; checkpoints save :meth:`elapsed`).
    """

    def __init__(self, seconds: float, device: torch.device, spent: float = 0.0):
        self.seconds = float(seconds)
        self.device = device  # where the collective runs (NCCL needs GPU tensors)
        self.start = now() - float(spent)
        self.fraction = min(1.0, float(spent) / self.seconds)

    def elapsed(self) -> float:
        """Training seconds spent so far, including those before a resume (this rank's clock)."""
        return now() - self.start

    def sync(self) -> float:
        """Update and return :attr:`fraction` (0 to 1); a collective under ``torch.distributed``."""
        local = self.elapsed() / self.seconds
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # Rank 0's clock decides, so every rank uses the same learning rate and stops at the same step.
            value = torch.tensor([local], dtype=torch.float64, device=self.device)
            dist.broadcast(value, src=0)
            local = float(value)
        self.fraction = min(1.0, local)
        return self.fraction


class TimeBudgetCallback(TrainerCallback):
    """Stops training once the budget of a :class:`BudgetClock` is spent (saving if saves are on)."""

    def __init__(self, clock: BudgetClock):
        self.clock = clock

    def on_optimizer_step(self, args, state, control, **kwargs):
        # Between the optimiser step and the scheduler step: the next learning rate sees the current time.
        self.clock.sync()

    def on_step_end(self, args, state, control, **kwargs):
        if self.clock.fraction >= 1.0 and state.global_step < state.max_steps:
            logger.warning("max_train_seconds=%g spent after %d of %d steps: stopping", self.clock.seconds,
                           state.global_step, state.max_steps)
            control.should_training_stop = True
            control.should_save = control.should_save or args.save_strategy != "no"
        return control


def budget_schedule_factor(num_training_steps: int, warmup_share: float, clock: BudgetClock):
    """``step -> learning-rate factor`` of a linear warm-up + decay driven by steps or time, whichever
    is further along (for ``torch.optim.lr_scheduler.LambdaLR``)."""

    def factor(step: int) -> float:
        progress = max(step / max(1, num_training_steps), clock.fraction)
        if progress < warmup_share:
            return progress / warmup_share
        return max(0.0, (1.0 - progress) / max(1e-12, 1.0 - warmup_share))

    return factor


__all__ = ["BudgetClock", "TimeBudgetCallback", "budget_schedule_factor"]
