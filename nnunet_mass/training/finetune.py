"""Fine-tuning behaviour for plans-built nnU-Net networks that start from pretrained weights."""
import torch

from nnunet_mass.training.schedules import WarmupPolyLRScheduler
from nnunet_mass.training.settings import apply_environment_overrides
from nnunet_mass.training.transfer import route_pretrained_weights_loading


class FinetuneScheduleMixin:
    """Mix in before `nnUNetTrainer`: SGD as nnU-Net, LR warm-up then poly, environment
    overrides, and `-pretrained_weights` read on any device with a clear mismatch report.

    The network is exactly the plans' network, so `nnUNetv2_predict` needs nothing of ours.
    """

    tunable = {"num_epochs": int, "num_iterations_per_epoch": int, "num_val_iterations_per_epoch": int,
               "initial_lr": float, "warmup_epochs": int}
    warmup_fraction = 0.05  # of num_epochs, unless warmup_epochs is set

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.warmup_epochs = None
        overrides = apply_environment_overrides(self, self.tunable)
        if overrides:
            self.print_to_log_file(f"Settings from the environment: {overrides}")

    def initialize(self):
        route_pretrained_weights_loading()
        super().initialize()

    def resolved_warmup_epochs(self) -> int:
        if self.warmup_epochs is not None:
            return self.warmup_epochs
        return int(round(self.warmup_fraction * self.num_epochs))

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.network.parameters(), self.initial_lr, weight_decay=self.weight_decay,
                                    momentum=0.99, nesterov=True)
        scheduler = WarmupPolyLRScheduler(optimizer, self.initial_lr, self.resolved_warmup_epochs(),
                                          self.num_epochs)
        return optimizer, scheduler
