"""Which masks become the tasks of a pretext sample, and on which channels.

A mask is *present* when it has at least `min_voxels` voxels in the reference window. Up to
`max_count` present masks are drawn uniformly without replacement: the masks are visited in
one random order and the first present ones are kept, which is the same draw whichever way
presence is established:

- with bounding boxes in the index, a mask whose box cannot hold `min_voxels` voxels of the
  window is skipped without reading anything, and only the layers of the masks visited are
  read (and each layer once);
- without boxes (older index files), every layer of the window is read and counted.

The K channels of a sample: the drawn masks, an all-ones whole-field-of-view task at a random
channel among them (optional), and padding channels (empty, invalid) up to K. After
augmentation a drawn mask with fewer than `min_voxels` voxels in the augmented reference is
invalid: the reference no longer shows what to look for. A mask that is empty in the query
stays valid: "nothing here" is a true answer the network must learn.
"""
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from nnunet_mass.masks.stack import MaskInfo
from nnunet_mass.pretext.windows import intersection_volume


class MaskSource(Protocol):
    """What selection needs of a case's masks (StoredMaskStack provides it)."""
    masks: list[MaskInfo]

    @property
    def has_bboxes(self) -> bool: ...

    def crop_bbox(self, bbox, layers: Sequence[int] | None = None) -> np.ndarray: ...


@dataclass(frozen=True)
class ChannelPlan:
    """Where each drawn mask and the whole-FOV task sit among the K channels."""
    num_channels: int             # K
    mask_channels: tuple[int, ...]  # channel of drawn mask i
    fov_channel: int | None       # channel of the all-ones task, None without it

    @property
    def padding_channels(self) -> tuple[int, ...]:
        used = set(self.mask_channels) | ({self.fov_channel} if self.fov_channel is not None else set())
        return tuple(c for c in range(self.num_channels) if c not in used)


def draw_present_masks(source: MaskSource, window: np.ndarray, min_voxels: int, max_count: int,
                       rng: np.random.Generator, use_bboxes: bool | None = None,
                       size_bias: float = 0.0) -> list[MaskInfo]:
    """Up to `max_count` masks present in `window` (box (D, 2)), drawn without replacement:
    uniformly (MASS) with `size_bias` 0, else with weights voxels ** size_bias.

    `use_bboxes` None: use the index's boxes when every mask has one.
    """
    use_bboxes = source.has_bboxes if use_bboxes is None else use_bboxes
    order = draw_order(source.masks, size_bias, rng)  # one random order for both ways of testing presence
    counter = _BoxedCounter(source, window, min_voxels) if use_bboxes else _FullCounter(source, window)
    chosen = []
    for index in order:
        if len(chosen) == max_count:
            break
        if counter.count(index) >= min_voxels:
            chosen.append(source.masks[index])
    return chosen


def draw_order(masks, size_bias: float, rng: np.random.Generator) -> np.ndarray:
    """A random order of `masks`, as successive weighted draws without replacement
    (Efraimidis-Spirakis keys u ** (1 / weight))."""
    if size_bias == 0:
        return rng.permutation(len(masks))
    weights = np.maximum([m.voxels for m in masks], 1).astype(np.float64) ** size_bias
    return np.argsort(-np.log(rng.random(len(masks))) / weights)


def present_masks(source: MaskSource, window: np.ndarray, min_voxels: int,
                  use_bboxes: bool | None = None) -> list[int]:
    """Indices of every mask present in `window` (for inspection and tests; reads what it must)."""
    use_bboxes = source.has_bboxes if use_bboxes is None else use_bboxes
    counter = _BoxedCounter(source, window, min_voxels) if use_bboxes else _FullCounter(source, window)
    return [i for i in range(len(source.masks)) if counter.count(i) >= min_voxels]


class _LayerCounts:
    """Voxel counts per label of window crops of single layers, each layer read once."""

    def __init__(self, source: MaskSource, window: np.ndarray):
        self.source, self.window, self.cache = source, window, {}

    def __call__(self, layer: int) -> np.ndarray:
        if layer not in self.cache:
            crop = self.source.crop_bbox(self.window, [layer])[0]  # uint16 (window)
            self.cache[layer] = np.bincount(crop.ravel())
        return self.cache[layer]


class _FullCounter:
    """Counts from every layer of the window (no boxes needed)."""

    def __init__(self, source: MaskSource, window: np.ndarray):
        self.masks = source.masks
        layers = source.crop_bbox(window)  # uint16 (L, window): all layers at once
        self.counts = [np.bincount(layer.ravel()) for layer in layers]

    def count(self, index: int) -> int:
        info = self.masks[index]
        counts = self.counts[info.layer]
        return int(counts[info.label]) if info.label < len(counts) else 0


class _BoxedCounter:
    """Counts only for masks whose box can hold `min_voxels` voxels of the window."""

    def __init__(self, source: MaskSource, window: np.ndarray, min_voxels: int):
        self.masks = source.masks
        boxes = np.asarray([m.bbox for m in source.masks], dtype=np.int64).reshape(len(source.masks), -1, 2)
        # the window cannot hold more voxels of a mask than its box shares with the window
        self.possible = intersection_volume(window, boxes) >= min_voxels if len(boxes) else np.zeros(0, bool)
        self.layer_counts = _LayerCounts(source, window)

    def count(self, index: int) -> int:
        if not self.possible[index]:
            return 0
        info = self.masks[index]
        counts = self.layer_counts(info.layer)
        return int(counts[info.label]) if info.label < len(counts) else 0


def plan_channels(num_drawn: int, num_channels: int, whole_fov_task: bool, rng: np.random.Generator) -> ChannelPlan:
    """Drawn masks on the first channels, the whole-FOV task at a random place among them,
    padding after."""
    if num_drawn + int(whole_fov_task) > num_channels:
        raise ValueError(f"{num_drawn} masks{' + the whole-FOV task' if whole_fov_task else ''} do not fit "
                         f"{num_channels} channels")
    if not whole_fov_task:
        return ChannelPlan(num_channels, tuple(range(num_drawn)), None)
    fov = int(rng.integers(0, num_drawn + 1))
    return ChannelPlan(num_channels, tuple(c for c in range(num_drawn + 1) if c != fov), fov)


def assemble_tasks(reference: np.ndarray, query: np.ndarray, plan: ChannelPlan,
                   min_voxels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """K-channel reference and query masks and validity from the augmented drawn masks.

    reference, query: bool (n, *patch), the n drawn masks (n may be 0). Returns
    (reference bool (K, *patch), query bool (K, *patch), valid bool (K,)).
    """
    if len(plan.mask_channels) != len(reference) or reference.shape != query.shape:
        raise ValueError(f"{len(plan.mask_channels)} planned masks, got reference {reference.shape} and "
                         f"query {query.shape}")
    patch_shape = reference.shape[1:]
    ref_out = np.zeros((plan.num_channels, *patch_shape), dtype=bool)    # (K, *patch)
    query_out = np.zeros((plan.num_channels, *patch_shape), dtype=bool)  # (K, *patch)
    valid = np.zeros(plan.num_channels, dtype=bool)                      # (K,)
    channels = list(plan.mask_channels)
    ref_out[channels] = reference
    query_out[channels] = query
    # presence was checked before augmentation; scaling and cropping can shrink a mask below it
    valid[channels] = reference.sum(axis=tuple(range(1, reference.ndim))) >= min_voxels
    if plan.fov_channel is not None:
        ref_out[plan.fov_channel] = True
        query_out[plan.fov_channel] = True
        valid[plan.fov_channel] = True
    return ref_out, query_out, valid
