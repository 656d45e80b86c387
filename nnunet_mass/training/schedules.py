"""Learning-rate schedules stepped once per epoch, as nnU-Net's trainers step them."""
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
    `--c` resumes on exactly the same curve."""

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
            group["lr"] = lr
        self._last_lr = [lr] * len(self.optimizer.param_groups)
