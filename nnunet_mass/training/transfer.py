"""Loading pretrained weights into a plans-built network, on any device, with errors that name the fix.

nnU-Net's `-pretrained_weights` loader uses `torch.load` without `map_location` (a GPU
checkpoint cannot be read on a CPU-only machine) and fails with a bare AssertionError on
the first mismatching key. Our trainers route `-pretrained_weights` through
`load_pretrained_weights` below, which keeps nnU-Net's contract: every key of the target
network except the segmentation layers must exist with the same shape.
"""
import os
from functools import partial
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from nnunet_mass.networks.unwrap import unwrap

SKIPPED_KEY_PARTS = (".seg_layers.",)
# What fine-tuning takes from a checkpoint, as key prefixes (None: everything but seg_layers).
# The plans' decoder holds a reference to the encoder, hence `decoder.encoder.`.
TRANSFER_PARTS = {"encoder_decoder": None, "encoder": ("encoder.", "decoder.encoder.")}
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class IncompatibleWeightsError(RuntimeError):
    pass


def read_network_weights(path: str) -> Dict[str, torch.Tensor]:
    """`network_weights` of an nnU-Net checkpoint file, as CPU tensors, wrapper prefixes removed."""
    from nnunet_mass.bundles.bundle import bundle_network_weights, is_bundle  # a bundle zip holds a checkpoint
    if is_bundle(path):
        return plain_state(bundle_network_weights(path))
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


def transferred_keys(target: Dict[str, torch.Tensor], parts: Optional[Sequence[str]] = None) -> List[str]:
    """The target keys a transfer must fill: all but the segmentation layers, or only `parts` prefixes."""
    return [key for key in target if not any(part in key for part in SKIPPED_KEY_PARTS)
            and (parts is None or key.startswith(tuple(parts)))]


def transfer_problems(target: Dict[str, torch.Tensor], pretrained: Dict[str, torch.Tensor],
                      parts: Optional[Sequence[str]] = None) -> List[str]:
    """One line per transferred target key that is missing or shaped differently."""
    problems = []
    for key in transferred_keys(target, parts):
        value = target[key]
        if key not in pretrained:
            problems.append(f"{key}: missing in the pretrained weights")
        elif pretrained[key].shape != value.shape:
            problems.append(f"{key}: pretrained {tuple(pretrained[key].shape)}, "
                            f"this network {tuple(value.shape)}")
    return problems


def dimensionality_problem(target: Dict[str, torch.Tensor], pretrained: Dict[str, torch.Tensor]) -> Optional[str]:
    """A sentence when the checkpoint's convolutions are 2D and the network's 3D (or the reverse)."""
    def conv_dims(state):
        return {value.ndim - 2 for key, value in state.items() if key.endswith("conv.weight") and value.ndim >= 4}

    ours, theirs = conv_dims(target), conv_dims(pretrained)
    if len(ours) == 1 and len(theirs) == 1 and ours != theirs:
        return (f"the pretrained weights come from a {min(theirs)}D configuration and this network is "
                f"{min(ours)}D; fine-tune a configuration of the pretraining's dimensionality "
                "(e.g. 3d_fullres after a 3d_fullres pretraining)")
    return None


def load_pretrained_weights(network: nn.Module, fname: str, verbose: bool = False,
                            parts: Optional[Sequence[str]] = None) -> None:
    """Drop-in for nnU-Net's loader of the same name (same signature and key rules); `parts`
    limits the transfer to keys with these prefixes (see TRANSFER_PARTS)."""
    module = unwrap(network)
    pretrained = read_network_weights(fname)
    target = module.state_dict()
    dimensionality = dimensionality_problem(target, pretrained)
    if dimensionality:
        raise IncompatibleWeightsError(f"Cannot fine-tune from {fname}: {dimensionality}.")
    problems = transfer_problems(target, pretrained, parts)
    if problems:
        listing = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise IncompatibleWeightsError(
            f"The pretrained weights in {fname} do not fit this network:\n  {listing}\n"
            "Pretraining and fine-tuning must use the same plans (architecture, strides, features, "
            "input channels). Copy the pretraining plans to this dataset with\n"
            "  nnUNetv2_move_plans_between_datasets -s <pretraining dataset> -t <this dataset> "
            "-sp <pretraining plans> -tp <new plans name>\n"
            "then preprocess and train with `-p <new plans name>`.")
    transferred = {k: pretrained[k] for k in transferred_keys(target, parts)}
    target.update(transferred)
    module.load_state_dict(target)
    print(f"Loaded pretrained weights from {fname}: {len(transferred)} of {len(target)} tensors "
          f"(segmentation layers start fresh)")
    if verbose:
        for key in transferred:
            print(f"  {key} {tuple(transferred[key].shape)}")


def route_pretrained_weights_loading(parts: Optional[Sequence[str]] = None) -> None:
    """Make `nnUNetv2_train -pretrained_weights` use our loader (limited to `parts`) in this process.

    `run_training` calls the loader it imported by name after our trainer is initialised,
    so rebinding that name is enough; nnU-Net's files stay untouched.
    """
    import nnunetv2.run.run_training as run_training

    run_training.load_pretrained_weights = partial(load_pretrained_weights, parts=parts)


def refuse_pretrained_weights(trainer_name: str) -> None:
    """Make `-pretrained_weights` fail in this process: for trainers that must start from random weights."""
    import nnunetv2.run.run_training as run_training

    def refuse(network, fname, verbose=False):
        raise ValueError(f"{trainer_name} trains from random weights; it does not take -pretrained_weights {fname}")

    run_training.load_pretrained_weights = refuse
