"""The in-context segmentation loss: soft Dice + BCE over the K binary task channels.

Channels whose task is undefined (padding, or a mask that left the reference view) carry
`valid == False` and contribute nothing, so the network is never trained blindly on them.
A valid task whose structure is absent from the query keeps an empty target: predicting
nothing there is part of the task.
"""
import torch
import torch.nn.functional as F
from torch import nn


class InContextLoss(nn.Module):
    def __init__(self, dice_weight: float = 1.0, bce_weight: float = 1.0, smooth: float = 1.0):
        super().__init__()
        self.dice_weight = dice_weight
        self.bce_weight = bce_weight
        self.smooth = smooth  # in voxels: keeps the Dice of an empty target finite and near 1 for an empty prediction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """logits, targets (B, K, *S); valid bool (B, K). Mean over valid channels."""
        logits, targets = logits.float(), targets.float()  # bf16 autocast: reduce in float32
        weights = valid.float()
        count = weights.sum().clamp_min(1.0)
        spatial = tuple(range(2, logits.ndim))
        probabilities = torch.sigmoid(logits)
        intersection = (probabilities * targets).sum(spatial)
        dice = (2 * intersection + self.smooth) / (probabilities.sum(spatial) + targets.sum(spatial) + self.smooth)
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(spatial)
        per_channel = self.dice_weight * (1 - dice) + self.bce_weight * bce  # (B, K)
        return (per_channel * weights).sum() / count


def task_dice(logits: torch.Tensor, targets: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Hard Dice per (B, K) channel at a probability threshold; NaN where target and
    prediction are both empty (no structure to score)."""
    predicted = torch.sigmoid(logits.float()) > threshold
    targets = targets.bool()
    spatial = tuple(range(2, logits.ndim))
    intersection = (predicted & targets).sum(spatial).float()
    total = (predicted.sum(spatial) + targets.sum(spatial)).float()
    return torch.where(total > 0, 2 * intersection / total.clamp_min(1), torch.full_like(total, float("nan")))
