"""nnUNetTrainerMASSFinetune: fine-tunes the plans' network from (MASS) pretrained weights.

nnU-Net imports this file as a top-level module during its trainer search; the behaviour
lives in `nnunet_mass.training`.
"""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_mass.training.finetune import FinetuneScheduleMixin


class nnUNetTrainerMASSFinetune(FinetuneScheduleMixin, nnUNetTrainer):
    pass


class nnUNetTrainerMASSFinetune_scratch(nnUNetTrainerMASSFinetune):
    """Same schedule from random weights: the baseline arm of low-label comparisons."""
    pass
