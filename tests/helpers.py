"""Helpers shared by tests."""
import torch


def save_as_if_saved_on_gpu(obj, path) -> None:
    """torch.save, but every storage is tagged 'cuda:0' as on a GPU machine.

    Loading such a file without map_location fails on a CPU-only machine, exactly like a
    checkpoint copied from a GPU server.
    """
    import torch.serialization as serialization

    original = serialization.location_tag
    serialization.location_tag = lambda storage: "cuda:0"
    try:
        torch.save(obj, path)
    finally:
        serialization.location_tag = original


def tiny_plans_network(num_input_channels: int = 1, num_classes: int = 3, features=(4, 8, 16)):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    n = len(features)
    return PlainConvUNet(num_input_channels, n, list(features), torch.nn.Conv3d, 3, [1] + [2] * (n - 1), 1,
                         num_classes, 1, conv_bias=True, norm_op=torch.nn.InstanceNorm3d,
                         norm_op_kwargs={"affine": True}, nonlin=torch.nn.LeakyReLU)
