"""The plans-built nnU-Net network, and its decoder run stage by stage for its feature maps."""
from typing import List, Sequence

import torch
from torch import nn


def build_plans_backbone(plans_manager, configuration_manager, num_input_channels: int) -> nn.Module:
    """The network nnU-Net builds from this configuration of the plans (one output channel,
    no deep supervision, nnU-Net's weight initialisation), so its encoder and decoder keep the
    state_dict key names that `-pretrained_weights` expects."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    del plans_manager  # the configuration holds everything; kept for nnU-Net's call signature
    return get_network_from_plans(
        configuration_manager.network_arch_class_name,
        configuration_manager.network_arch_init_kwargs,
        configuration_manager.network_arch_init_kwargs_req_import,
        num_input_channels,
        1,
        allow_init=True,
        deep_supervision=False,
    )


def check_unet_decoder(decoder: nn.Module) -> None:
    """Refuse decoders that do not follow UNetDecoder's layout (`transpconvs` + `stages`)."""
    if not (hasattr(decoder, "transpconvs") and hasattr(decoder, "stages")):
        raise TypeError(f"{type(decoder).__name__} is not a U-Net decoder with `transpconvs` and `stages`; "
                        "MASS needs a plans network built on dynamic-network-architectures' UNetDecoder "
                        "(PlainConvUNet, ResidualEncoderUNet)")


def decoder_features(decoder: nn.Module, skips: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """Feature maps of every decoder stage, coarsest first, the last at full resolution.

    Follows UNetDecoder's wiring (upsample the stage below, concatenate the matching encoder
    skip, convolve) but skips `seg_layers`, so no class count is baked in.
    `skips`: the encoder's outputs in the order computed, the bottleneck last.
    """
    check_unet_decoder(decoder)
    x = skips[-1]
    features = []
    for s, (upsample, stage) in enumerate(zip(decoder.transpconvs, decoder.stages)):
        x = stage(torch.cat((upsample(x), skips[-(s + 2)]), 1))  # (B, C_skip, *skip)
        features.append(x)
    return features
