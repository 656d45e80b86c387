"""Loading pretrained weights into a plans-built network, on any device, with errors that name the fix.

nnU-Net's `-pretrained_weights` loader uses `torch.load` without `map_location` (a GPU
checkpoint cannot be read on a CPU-only machine) and fails with a bare AssertionError on
the first mismatching key. Our trainers route `-pretrained_weights` through
`load_pretrained_weights` below, which keeps nnU-Net's contract: every key of the target
network except the segmentation layers must exist with the same shape.
"""
import os
from typing import Dict, List

import torch
from torch import nn

from nnunet_mass.networks.unwrap import unwrap

SKIPPED_KEY_PARTS = (".seg_layers.",)
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class IncompatibleWeightsError(RuntimeError):
    pass


def read_network_weights(path: str) -> Dict[str, torch.Tensor]:
    """`network_weights` of an nnU-Net checkpoint file, as CPU tensors, wrapper prefixes removed."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Pretrained weights file not found: {path}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise IncompatibleWeightsError(
            f"{path} is not an nnU-Net checkpoint: it has no 'network_weights' entry")
    return plain_state(checkpoint["network_weights"])


def plain_state(state: dict) -> dict:
    """A state dict saved through DDP (`module.`) or torch.compile (`_orig_mod.`) wrappers, with plain keys."""
    return {_strip_wrapper_prefixes(key): value for key, value in state.items()}


def _strip_wrapper_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


def transfer_problems(target: Dict[str, torch.Tensor], pretrained: Dict[str, torch.Tensor]) -> List[str]:
    """One line per target key (segmentation layers excepted) that is missing or shaped differently."""
    problems = []
    for key, value in target.items():
        if any(part in key for part in SKIPPED_KEY_PARTS):
            continue
        if key not in pretrained:
            problems.append(f"{key}: missing in the pretrained weights")
        elif pretrained[key].shape != value.shape:
            problems.append(f"{key}: pretrained {tuple(pretrained[key].shape)}, "
                            f"this network {tuple(value.shape)}")
    return problems


def load_pretrained_weights(network: nn.Module, fname: str, verbose: bool = False) -> None:
    """Drop-in for nnU-Net's loader of the same name (same signature and key rules)."""
    module = unwrap(network)
    pretrained = read_network_weights(fname)
    target = module.state_dict()
    problems = transfer_problems(target, pretrained)
    if problems:
        listing = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise IncompatibleWeightsError(
            f"The pretrained weights in {fname} do not fit this network:\n  {listing}\n"
            "Pretraining and fine-tuning must use the same plans (architecture, strides, features, "
            "input channels). Copy the pretraining plans to this dataset with\n"
            "  nnUNetv2_move_plans_between_datasets -s <pretraining dataset> -t <this dataset> "
            "-sp <pretraining plans> -tp <new plans name>\n"
            "then preprocess and train with `-p <new plans name>`.")
    transferred = {k: v for k, v in pretrained.items()
                   if k in target and not any(part in k for part in SKIPPED_KEY_PARTS)}
    target.update(transferred)
    module.load_state_dict(target)
    print(f"Loaded pretrained weights from {fname}: {len(transferred)} of {len(target)} tensors "
          f"(segmentation layers start fresh)")
    if verbose:
        for key in transferred:
            print(f"  {key} {tuple(transferred[key].shape)}")


def route_pretrained_weights_loading() -> None:
    """Make `nnUNetv2_train -pretrained_weights` use our loader in this process.

    `run_training` calls the loader it imported by name after our trainer is initialised,
    so rebinding that name is enough; nnU-Net's files stay untouched.
    """
    import nnunetv2.run.run_training as run_training

    run_training.load_pretrained_weights = load_pretrained_weights
