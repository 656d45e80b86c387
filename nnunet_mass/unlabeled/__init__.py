"""Unlabeled scans -> an nnU-Net raw dataset whose labels are computed body masks."""
from nnunet_mass.unlabeled.body_mask import compute_body_mask
from nnunet_mass.unlabeled.prepare import PreparationError, PreparationReport, prepare_unlabeled_dataset

__all__ = ["PreparationError", "PreparationReport", "compute_body_mask", "prepare_unlabeled_dataset"]
