"""Pretraining checkpoints: nnU-Net's keys, with the EMA as `network_weights`.

`network_weights` holds the EMA as CPU tensors with the plans network's key names, so
stock `-pretrained_weights` and every downstream command read the weights MASS meant
to transfer. The raw weights and the EMA's update count are kept for resuming.
"""
import os
from pathlib import Path

import torch

RAW_WEIGHTS_KEY = "raw_network_weights"
EMA_UPDATES_KEY = "ema_updates"
MASS_KEY = "mass"  # pretext and network settings, plugin version: what downstream tools need to know


def save_atomically(checkpoint: dict, filename) -> None:
    """torch.save to a temporary file, then rename: a crash while writing never damages the
    previous checkpoint of the same name."""
    filename = Path(filename)
    partial = filename.with_name(f".{filename.name}.partial")
    try:
        torch.save(checkpoint, partial)
        os.replace(partial, filename)
    finally:
        partial.unlink(missing_ok=True)


def read_checkpoint(filename_or_checkpoint, device: torch.device) -> dict:
    """A checkpoint dict from a path (mapped onto `device`) or a dict given as is."""
    if isinstance(filename_or_checkpoint, dict):
        return filename_or_checkpoint
    return torch.load(filename_or_checkpoint, map_location=device, weights_only=False)

