"""Fine-tuning behaviour for plans-built nnU-Net networks that start from pretrained weights.

Variants (in `trainers/`) change class attributes only: the optimiser, how fast pretrained
layers learn relative to the new segmentation layers, a frozen-encoder phase, the length
of the schedule, and which parts of the checkpoint are transferred.
"""
from typing import Dict, List

import torch

from nnunet_mass.networks.unwrap import unwrap
from nnunet_mass.training.schedules import WarmupPolyLRScheduler
from nnunet_mass.training.settings import apply_environment_overrides
from nnunet_mass.training.transfer import TRANSFER_PARTS, refuse_pretrained_weights, route_pretrained_weights_loading


class FinetuneScheduleMixin:
    """Mix in before `nnUNetTrainer`: LR warm-up then poly, per-part learning rates,
    environment overrides, and `-pretrained_weights` read on any device with a clear
    mismatch report.

    The network is exactly the plans' network, so `nnUNetv2_predict` needs nothing of ours.
    """

    tunable = {"num_epochs": int, "num_iterations_per_epoch": int, "num_val_iterations_per_epoch": int,
               "initial_lr": float, "warmup_epochs": int}
    warmup_fraction = 0.05  # of num_epochs, unless warmup_epochs is set
    optimizer_name = "sgd"  # nnU-Net's SGD (momentum 0.99, Nesterov) or "adamw"
    pretrained_lr_scale = 1.0  # LR of encoder and decoder relative to the new segmentation layers
    frozen_encoder_fraction = 0.0  # of num_epochs during which the encoder does not change
    transferred_parts = "encoder_decoder"  # or "encoder": the decoder starts fresh too
    accepts_pretrained_weights = True
    # nnUNetTrainer.__init__ sets num_epochs, initial_lr, ... on the instance, so variants
    # name their values here and __init__ applies them afterwards
    trainer_defaults: Dict[str, float] = {}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.warmup_epochs = None
        for name, value in self.trainer_defaults.items():
            setattr(self, name, value)
        overrides = apply_environment_overrides(self, self.tunable)
        if overrides:
            self.print_to_log_file(f"Settings from the environment: {overrides}")

    def initialize(self):
        if self.accepts_pretrained_weights:
            route_pretrained_weights_loading(TRANSFER_PARTS[self.transferred_parts])
        else:
            refuse_pretrained_weights(type(self).__name__)
        super().initialize()

    def resolved_warmup_epochs(self) -> int:
        if self.warmup_epochs is not None:
            return self.warmup_epochs
        return int(round(self.warmup_fraction * self.num_epochs))

    def frozen_encoder_epochs(self) -> int:
        return int(round(self.frozen_encoder_fraction * self.num_epochs))

    def parameter_groups(self) -> List[Dict]:
        """New segmentation layers first (their LR is the one nnU-Net logs), then decoder and encoder."""
        parts: Dict[str, list] = {"new": [], "decoder": [], "encoder": []}
        for name, parameter in unwrap(self.network).named_parameters():
            parts[_part_of(name)].append(parameter)
        scales = {"new": 1.0, "decoder": self.pretrained_lr_scale, "encoder": self.pretrained_lr_scale}
        return [{"params": params, "name": part, "lr_scale": scales[part]} for part, params in parts.items() if params]

    def configure_optimizers(self):
        groups = self.parameter_groups()
        if self.optimizer_name == "adamw":
            optimizer = torch.optim.AdamW(groups, self.initial_lr, weight_decay=self.weight_decay)
        else:
            optimizer = torch.optim.SGD(groups, self.initial_lr, weight_decay=self.weight_decay,
                                        momentum=0.99, nesterov=True)
        scheduler = WarmupPolyLRScheduler(optimizer, self.initial_lr, self.resolved_warmup_epochs(), self.num_epochs)
        return optimizer, scheduler

    def on_train_epoch_start(self):
        # LR 0 leaves a group's weights exactly unchanged (weight decay included) and, unlike
        # requires_grad, does not change the set of parameters DDP reduces.
        frozen = self.current_epoch < self.frozen_encoder_epochs()
        for group in self.optimizer.param_groups:
            if group.get("name") == "encoder":
                group["lr_scale"] = 0.0 if frozen else self.pretrained_lr_scale
        if self.current_epoch == self.frozen_encoder_epochs() and self.current_epoch > 0:
            self.print_to_log_file("Encoder unfrozen")
        super().on_train_epoch_start()


def _part_of(parameter_name: str) -> str:
    if ".seg_layers." in f".{parameter_name}":
        return "new"
    return "encoder" if parameter_name.startswith("encoder.") else "decoder"
