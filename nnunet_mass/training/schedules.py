"""Learning-rate schedules: per epoch, as nnU-Net steps them (fine-tuning), and per iteration (pretraining)."""
import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import _LRScheduler


def warmup_poly_lr(epoch: int, initial_lr: float, warmup_epochs: int, num_epochs: int,
                   exponent: float = 0.9) -> float:
    """Linear warm-up to `initial_lr` over `warmup_epochs`, then nnU-Net's poly decay.

    Pretrained weights are damaged by large early updates while the new segmentation
    layer is still random; the warm-up lets that layer settle first.
    """
    if not 0 <= warmup_epochs < num_epochs:
        raise ValueError(f"warmup_epochs must lie in [0, num_epochs={num_epochs}), got {warmup_epochs}")
    if epoch < warmup_epochs:
        return initial_lr * (epoch + 1) / warmup_epochs
    progress = min(1.0, (epoch - warmup_epochs) / (num_epochs - warmup_epochs))
    return initial_lr * (1 - progress) ** exponent


class WarmupPolyLRScheduler(_LRScheduler):
    """`warmup_poly_lr` as a scheduler. It holds no state beyond the epoch it is given, so
    `--c` resumes on exactly the same curve. A parameter group's `lr_scale` (default 1)
    multiplies its LR: pretrained layers slower than new ones, or frozen at 0."""

    def __init__(self, optimizer: Optimizer, initial_lr: float, warmup_epochs: int, num_epochs: int,
                 exponent: float = 0.9):
        self.initial_lr = initial_lr
        self.warmup_epochs = warmup_epochs
        self.num_epochs = num_epochs
        self.exponent = exponent
        self._next_epoch = 0
        super().__init__(optimizer)

    def step(self, epoch: int | None = None) -> None:
        if epoch is None:
            epoch = self._next_epoch
        self._next_epoch = epoch + 1
        lr = warmup_poly_lr(epoch, self.initial_lr, self.warmup_epochs, self.num_epochs, self.exponent)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def warmup_cosine_lr(iteration: int, peak_lr: float, warmup_iterations: int, total_iterations: int,
                     final_lr: float = 1e-7) -> float:
    """MASS's one-cycle shape per iteration: linear warm-up to `peak_lr`, then cosine to `final_lr`."""
    if not 0 <= warmup_iterations < total_iterations:
        raise ValueError(f"warm-up must lie in [0, {total_iterations}) iterations, got {warmup_iterations}")
    if iteration < warmup_iterations:
        return peak_lr * (iteration + 1) / warmup_iterations
    progress = min(1.0, (iteration - warmup_iterations) / max(1, total_iterations - 1 - warmup_iterations))
    return final_lr + 0.5 * (peak_lr - final_lr) * (1 + math.cos(math.pi * progress))


class WarmupCosineLRScheduler(_LRScheduler):
    """`warmup_cosine_lr` stepped per iteration. nnU-Net calls `step(epoch)` at each epoch
    start, which sets the LR of that epoch's first iteration; the trainer calls
    `step_iteration` before every optimiser step. No state beyond the iteration: `--c`
    resumes on the same curve."""

    def __init__(self, optimizer: Optimizer, peak_lr: float, iterations_per_epoch: int, num_epochs: int,
                 warmup_fraction: float = 0.05, final_lr: float = 1e-7):
        self.peak_lr = peak_lr
        self.iterations_per_epoch = iterations_per_epoch
        self.total_iterations = iterations_per_epoch * num_epochs
        self.warmup_iterations = int(round(warmup_fraction * self.total_iterations))
        self.final_lr = final_lr
        super().__init__(optimizer)

    def get_lr(self):  # used once by _LRScheduler.__init__
        return [self._lr(0)] * len(self.optimizer.param_groups)

    def _lr(self, iteration: int) -> float:
        return warmup_cosine_lr(iteration, self.peak_lr, self.warmup_iterations, self.total_iterations, self.final_lr)

    def step(self, epoch: int | None = None) -> None:
        self.step_iteration((epoch or 0) * self.iterations_per_epoch)

    def step_iteration(self, iteration: int) -> None:
        lr = self._lr(iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self._last_lr = [lr] * len(self.optimizer.param_groups)
