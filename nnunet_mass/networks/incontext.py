"""The MASS in-context network on any nnU-Net plans backbone.

The plans network's `encoder` and `decoder` are root attributes with their own key names,
so a pretraining checkpoint loads into a plain nnU-Net network with stock
`-pretrained_weights`. Everything MASS adds lives under `mass.`.

Tasks (masks) stay independent: each mask gets its own tokens, the decoder runs once on
the query without conditioning, and every task's logits depend only on its own tokens.
"""
import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_mass.networks.backbone import build_plans_backbone, check_unet_decoder, decoder_features
from nnunet_mass.networks.task_encoder import TaskEncoder

NOT_A_PLAIN_NETWORK = ("{name}.forward needs reference and reference_masks: this is a MASS pretraining network: "
                       "use nnUNetv2_mass_incontext, or fine-tune it with -tr nnUNetTrainerMASSFinetune "
                       "-pretrained_weights")
_INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}


class TaskAttentionMap(nn.Module):
    """Coarse logits of each task at one query stage: every voxel attends to its own task's
    tokens only, and each token votes foreground or background."""

    def __init__(self, channels: int, dim: int):
        super().__init__()
        self.query = nn.Linear(channels, dim)  # a 1x1 convolution, for any number of dims
        self.vote = nn.Linear(dim, 1)

    def forward(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """features (B, C, *s), tokens (B, K, T, d) -> (B, K, *s)"""
        query = self.query(features.flatten(2).transpose(1, 2))  # (B, N, d)
        scores = torch.einsum("bnd,bktd->bktn", query, tokens) / math.sqrt(tokens.shape[-1])
        votes = self.vote(tokens).squeeze(-1)  # (B, K, T)
        maps = torch.einsum("bktn,bkt->bkn", scores.softmax(2), votes)
        return maps.reshape(*maps.shape[:2], *features.shape[2:])


class DynamicKernel(nn.Module):
    """Per task, a 1x1 kernel and bias made from its tokens, applied to the decoder's last features."""

    def __init__(self, dim: int, channels: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, channels + 1))

    def forward(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """features (B, C0, *S), tokens (B, K, stages, T, d) -> (B, K, *S)"""
        kernel = self.mlp(tokens.mean((2, 3)))  # (B, K, C0 + 1)
        logits = torch.einsum("bkc,bcn->bkn", kernel[..., :-1], features.flatten(2)) + kernel[..., -1:]
        return logits.reshape(*logits.shape[:2], *features.shape[2:])


class InContextNetwork(nn.Module):
    """Segments, in a query image, whatever each reference mask marks in a reference image.

    Task tokens have shape (B, K, stages, T, d): K masks, `task_stages` encoder stages (the
    finest of them first, the bottleneck last), T = num_learned_tokens + 1 tokens of d channels.
    """

    def __init__(self, backbone: nn.Module, token_dim: Optional[int] = None, num_learned_tokens: int = 10,
                 task_stages: int = 3, token_grid: int = 4, task_blocks: int = 2):
        super().__init__()
        check_unet_decoder(backbone.decoder)
        self.encoder = backbone.encoder
        self.decoder = backbone.decoder
        # MASS makes its own logits; unused parameters would stall DDP's gradient reduction
        self.decoder.seg_layers = nn.ModuleList()
        channels = list(self.encoder.output_channels)
        self.task_stages = max(1, min(task_stages, len(channels)))
        deep = channels[-self.task_stages:]
        dim = token_dim or min(256, channels[-1])
        self.mass = nn.ModuleDict({
            "tasks": TaskEncoder(deep, dim, num_learned_tokens, token_grid, task_blocks),
            "coarse": nn.ModuleList(TaskAttentionMap(c, dim) for c in deep),
            "kernel": DynamicKernel(dim, channels[0]),
        })

    def encoder_features(self, x: torch.Tensor) -> list:
        """The encoder's stage outputs, finest first, the bottleneck last."""
        return list(self.encoder(x))

    def encode_tasks(self, reference: torch.Tensor, reference_masks: torch.Tensor) -> torch.Tensor:
        """reference (B, C, *S), masks (B, K, *S) in [0, 1] -> task tokens (B, K, stages, T, d)."""
        _check_masks(reference, reference_masks)
        return self._tokens(self.encoder_features(reference), reference_masks)

    def segment(self, query: torch.Tensor, task_tokens: torch.Tensor) -> torch.Tensor:
        """query (B, C, *S'), tokens (B, K, stages, T, d) -> logits (B, K, *S'), one sigmoid map per task."""
        if task_tokens.ndim != 5 or task_tokens.shape[2] != self.task_stages:
            raise ValueError(f"task tokens must be (B, K, {self.task_stages}, T, d), got {tuple(task_tokens.shape)}")
        return self._segment(self.encoder_features(query), task_tokens)

    def forward(self, query: torch.Tensor, reference: Optional[torch.Tensor] = None,
                reference_masks: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits (B, K, *S') of the K reference masks' tasks in the query."""
        if reference is None or reference_masks is None:
            raise TypeError(NOT_A_PLAIN_NETWORK.format(name=type(self).__name__))
        _check_masks(reference, reference_masks)
        query_skips, reference_skips = self._encode_pair(query, reference)
        return self._segment(query_skips, self._tokens(reference_skips, reference_masks))

    @staticmethod
    def average_tasks(token_list: Sequence[torch.Tensor]) -> torch.Tensor:
        """Mean of the task tokens of several references of the same tasks (few-shot ensembling)."""
        shapes = {tuple(t.shape) for t in token_list}
        if len(shapes) != 1:
            raise ValueError(f"task tokens to average must share one shape, got {sorted(shapes)}")
        return torch.stack(list(token_list)).mean(0)

    def _encode_pair(self, query: torch.Tensor, reference: torch.Tensor):
        """Encoder outputs of query and reference; one encoder call when their shapes match
        (instance norm keeps the samples apart; a batch-norm backbone would pool their statistics)."""
        if query.shape != reference.shape:
            return self.encoder_features(query), self.encoder_features(reference)
        skips = self.encoder_features(torch.cat([query, reference]))
        b = query.shape[0]
        return [s[:b] for s in skips], [s[b:] for s in skips]

    def _tokens(self, reference_skips: Sequence[torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
        return self.mass["tasks"](reference_skips[-self.task_stages:], masks.to(reference_skips[0].dtype))

    def _segment(self, query_skips: Sequence[torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
        fine = decoder_features(self.decoder, query_skips)[-1]  # (B, C0, *S')
        return self.mass["kernel"](fine, tokens) + _upsample(self._coarse(query_skips, tokens), fine.shape[2:])

    def _coarse(self, query_skips: Sequence[torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
        """Sum of the task stages' coarse maps at the finest task stage's grid, (B, K, *s).

        Upsampled stage by stage (deepest first), so only one map per task is interpolated to
        full resolution: that interpolation was about a sixth of a training step on CPU.
        """
        total = None
        for s in reversed(range(self.task_stages)):
            features = query_skips[len(query_skips) - self.task_stages + s]
            coarse = self.mass["coarse"][s](features, tokens[:, :, s])  # (B, K, *s)
            total = coarse if total is None else coarse + _upsample(total, coarse.shape[2:])
        return total


def _upsample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(Bi/tri)linear resize of (B, K, *s) maps to (B, K, *size)."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=list(size), mode=_INTERPOLATION[x.ndim - 2], align_corners=False)


def _check_masks(reference: torch.Tensor, masks: torch.Tensor) -> None:
    if masks.ndim != reference.ndim or masks.shape[0] != reference.shape[0] or masks.shape[2:] != reference.shape[2:]:
        raise ValueError(f"reference_masks must be (B, K, *S) for a reference (B, C, *S) = "
                         f"{tuple(reference.shape)}, got {tuple(masks.shape)}")


def build_incontext_network(plans_manager, configuration_manager, num_input_channels: int,
                            **options) -> InContextNetwork:
    """The in-context network on the backbone the plans define; options go to InContextNetwork."""
    backbone = build_plans_backbone(plans_manager, configuration_manager, num_input_channels)
    return InContextNetwork(backbone, **options)
