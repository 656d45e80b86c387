"""One place that strips DDP and torch.compile wrappers off a network."""
from torch import nn


def unwrap(network: nn.Module) -> nn.Module:
    """The plain module under any nesting of DistributedDataParallel (`.module`) and
    torch.compile (`._orig_mod`) wrappers."""
    from torch._dynamo import OptimizedModule
    from torch.nn.parallel import DistributedDataParallel

    while True:
        if isinstance(network, DistributedDataParallel):
            network = network.module
        elif isinstance(network, OptimizedModule):
            network = network._orig_mod
        else:
            return network
