"""nnUNetTrainerMASSPretrain: MASS in-context pretraining of the plans' network.

nnU-Net imports this file as a top-level module during its trainer search; the behaviour
lives in `nnunet_mass.training.pretrain`. Variants only set attributes.
"""
from nnunet_mass.training.pretrain import MASSPretrainTrainer


class nnUNetTrainerMASSPretrain(MASSPretrainTrainer):
    pass


class nnUNetTrainerMASSPretrain_lamb(MASSPretrainTrainer):
    """MASS's own optimiser: LAMB (timm) with peak LR 2e-3."""

    optimizer_name = "lamb"
    peak_lr = 2e-3


class nnUNetTrainerMASSPretrain_uniformMasks(MASSPretrainTrainer):
    """MASS's own mask draw: uniform over the case's masks (for structure-level masks such as SAM2's)."""

    mask_size_bias = 0.0
