"""nnUNetTrainerMASSFinetune: fine-tunes the plans' network from (MASS) pretrained weights.

nnU-Net imports this file as a top-level module during its trainer search; the behaviour
lives in `nnunet_mass.training`.
"""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_mass.training.finetune import FinetuneScheduleMixin


class nnUNetTrainerMASSFinetune(FinetuneScheduleMixin, nnUNetTrainer):
    pass
