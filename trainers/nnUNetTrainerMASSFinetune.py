"""nnUNetTrainerMASSFinetune and its variants: fine-tune the plans' network from (MASS)
pretrained weights. Pick a variant by name with `-tr`, as nnU-Net's own trainer variants.

nnU-Net imports this file as a top-level module during its trainer search; the behaviour
lives in `nnunet_mass.training.finetune`.
"""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_mass.training.finetune import FinetuneScheduleMixin


class nnUNetTrainerMASSFinetune(FinetuneScheduleMixin, nnUNetTrainer):
    """SGD as nnU-Net, LR warm-up over 5% of the epochs then poly; encoder and decoder transferred."""


class nnUNetTrainerMASSFinetune_frozenEncoder(nnUNetTrainerMASSFinetune):
    """The encoder stays fixed for the first 10% of the epochs while decoder and head adapt."""
    frozen_encoder_fraction = 0.1


class nnUNetTrainerMASSFinetune_lowerPretrainedLR(nnUNetTrainerMASSFinetune):
    """Pretrained encoder and decoder learn at a tenth of the new segmentation layers' LR."""
    pretrained_lr_scale = 0.1


class nnUNetTrainerMASSFinetune_adamw(nnUNetTrainerMASSFinetune):
    """MASS's fine-tuning optimiser: AdamW at 5e-4 (with our warm-up and poly decay)."""
    optimizer_name = "adamw"
    trainer_defaults = {"initial_lr": 5e-4}


class nnUNetTrainerMASSFinetune_encoderOnly(nnUNetTrainerMASSFinetune):
    """Transfers the encoder only, for checkpoints whose decoder does not fit these plans."""
    transferred_parts = "encoder"


class nnUNetTrainerMASSFinetune_adamw_encoderOnly(nnUNetTrainerMASSFinetune_encoderOnly, nnUNetTrainerMASSFinetune_adamw):
    """AdamW with only the encoder transferred: the best recipe at one labeled case on phantoms
    (README, "Figures on phantoms"); the pretext trains the decoder for MASS's dynamic
    kernels, and those decoder weights transferred worse than fresh ones there."""


class nnUNetTrainerMASSFinetune_250epochs(nnUNetTrainerMASSFinetune):
    trainer_defaults = {"num_epochs": 250}


class nnUNetTrainerMASSFinetune_100epochs(nnUNetTrainerMASSFinetune):
    """Short schedule for small datasets (tens of labeled cases)."""
    trainer_defaults = {"num_epochs": 100}


class nnUNetTrainerMASSFinetune_50epochs(nnUNetTrainerMASSFinetune):
    """MASS's own fine-tuning length (50 epochs), for a handful of labeled cases."""
    trainer_defaults = {"num_epochs": 50}


class nnUNetTrainerMASSFinetune_scratch(nnUNetTrainerMASSFinetune):
    """The same schedule from random weights: the baseline arm of low-label comparisons."""
    accepts_pretrained_weights = False


class nnUNetTrainerMASSFinetune_adamw_scratch(nnUNetTrainerMASSFinetune_adamw):
    """The baseline of `_adamw`: the same optimiser and schedule from random weights."""
    accepts_pretrained_weights = False


class nnUNetTrainerMASSFinetune_adamw_encoderOnly_scratch(nnUNetTrainerMASSFinetune_adamw_scratch):
    """The baseline of `_adamw_encoderOnly` (random weights: nothing to transfer)."""
