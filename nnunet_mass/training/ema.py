"""An exponential moving average of the network weights (torch's AveragedModel).

MASS evaluates and transfers the EMA, not the raw weights. The EMA lives on the training
device beside the network; checkpoints store it as CPU tensors under `network_weights`.
"""
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def build_ema(network: nn.Module, decay: float) -> AveragedModel:
    """EMA of `network` (pass the unwrapped module, not a DDP/compile wrapper); buffers averaged too."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
    ema = AveragedModel(network, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    ema.requires_grad_(False)
    return ema


def ema_state_on_cpu(ema: AveragedModel) -> dict:
    """The averaged weights with the plain network's key names, as CPU tensors."""
    return {key: value.detach().cpu().clone() for key, value in ema.module.state_dict().items()}


def restore_ema(ema: AveragedModel, weights: dict, num_updates: int) -> None:
    """Load averaged weights saved by `ema_state_on_cpu`; `num_updates` > 0 keeps the next
    update an average instead of a copy."""
    ema.module.load_state_dict(weights)
    ema.n_averaged.fill_(int(num_updates))


@torch.no_grad()
def update_ema(ema: AveragedModel, network: nn.Module) -> None:
    ema.update_parameters(network)
