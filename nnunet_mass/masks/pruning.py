"""Turn candidate label layers into a MaskStack: connected, size-limited, de-duplicated, capped.

`ProposalBuilder.add` takes candidate label maps (z, y, x) one at a time, in priority order,
and keeps each as a compact label vector over the body voxels, so the full-size candidate
can be freed at once. Every mask is cut to its largest face-connected piece inside the body
and kept if its size is within [min_voxels, max_voxels]. `finish` then

1. drops a mask whose IoU with a kept mask of an earlier layer reaches `nms_iou` (IoUs
   between two layers come from one joint histogram of their values);
2. caps the count by trimming the most fragmented layers, smallest masks first;
3. packs the survivors into as few non-overlapping uint16 layers as it can (largest masks
   first, each into the first layer where it fits), so a loader reads fewer layers.
"""
import numpy as np

from nnunet_mass.masks.quality import iou_matrix
from nnunet_mass.masks.regions import components
from nnunet_mass.masks.stack import MaskInfo, MaskStack, pack_first_fit


def largest_pieces(layer: np.ndarray, body: np.ndarray, min_voxels: int, max_voxels: int) -> np.ndarray:
    """int32 (z, y, x): each value of `layer` inside `body` reduced to its largest connected
    piece, kept if its size is within [min_voxels, max_voxels], renumbered 1..n by size."""
    pieces = components(np.where(body, layer, 0))
    count = int(pieces.max())
    if count == 0:
        return pieces
    owner = np.zeros(count + 1, dtype=np.int64)
    owner[pieces.ravel()] = layer.ravel()
    sizes = np.bincount(pieces.ravel(), minlength=count + 1)
    sizes[0] = 0
    order = np.argsort(-sizes[1:], kind="stable") + 1  # pieces, largest first
    _, first = np.unique(owner[order], return_index=True)
    keep = order[first]  # the largest piece of every owner
    keep = keep[(sizes[keep] >= min_voxels) & (sizes[keep] <= max_voxels)]
    keep = keep[np.argsort(-sizes[keep], kind="stable")]
    lookup = np.zeros(count + 1, dtype=np.int32)
    lookup[keep] = np.arange(1, keep.size + 1, dtype=np.int32)
    return lookup[pieces]


def suppress_duplicates(layers: list, nms_iou: float) -> list:
    """Per layer, the label vector with every mask whose IoU with a kept mask of an earlier
    layer is >= nms_iou removed, renumbered 1..n in the same order (None when none is left).

    `layers` are 1-D label vectors over the same voxels, numbered 1..n."""
    kept, out = [], []
    for values in layers:
        n = int(values.max()) if values.size else 0
        drop = np.zeros(n + 1, dtype=bool)
        for earlier, m in kept:
            drop |= iou_matrix(values, earlier, n, m).max(axis=1) >= nms_iou
        survivors = np.flatnonzero(~drop[1:]) + 1
        if survivors.size == 0:
            out.append(None)
            continue
        lookup = np.zeros(n + 1, dtype=np.int32)
        lookup[survivors] = np.arange(1, survivors.size + 1, dtype=np.int32)
        kept.append((lookup[values], survivors.size))
        out.append(kept[-1][0])
    return out


def layer_quotas(counts: list, budget: int) -> list:
    """Masks to keep per layer so that the total is at most `budget`: every layer keeps
    min(count, q) with the largest q that fits (water-filling), so layers of few, large
    masks are kept whole and only the most fragmented layers are trimmed."""
    if sum(counts) <= budget:
        return list(counts)
    low, high = 0, max(counts)
    while low < high:  # largest q with sum(min(c, q)) <= budget
        q = (low + high + 1) // 2
        if sum(min(c, q) for c in counts) <= budget:
            low = q
        else:
            high = q - 1
    quotas = [min(c, low) for c in counts]
    spare = budget - sum(quotas)
    for i, c in enumerate(counts):  # hand the remainder to the earliest trimmed layers
        if c > low and spare > 0:
            quotas[i] += 1
            spare -= 1
    return quotas


def mask_voxels(values: np.ndarray) -> list:
    """[indices of value v] for v = 1..max of a label vector, from one stable argsort."""
    order = np.argsort(values, kind="stable")
    bounds = np.searchsorted(values[order], np.arange(1, int(values.max()) + 2))
    return [order[bounds[i]:bounds[i + 1]] for i in range(bounds.size - 1)]


def pack_vectors(masks: list, size: int) -> tuple:
    """(uint16 (L, size) label vectors, [(layer, label)] per mask): every mask (voxel indices,
    largest first) goes into the first layer where none of its voxels is taken."""
    return pack_first_fit([((slice(None),), voxels) for voxels in masks], (size,))


class ProposalBuilder:
    """Collects candidate layers inside `body` and builds the MaskStack (module docstring)."""

    def __init__(self, body: np.ndarray, min_voxels: int, max_voxels: int):
        self.body = body
        self.inside = np.flatnonzero(body)
        self.min_voxels, self.max_voxels = int(min_voxels), int(max_voxels)
        self.vectors, self.sources = [], []

    def add(self, labels: np.ndarray, source: str) -> None:
        cleaned = largest_pieces(labels, self.body, self.min_voxels, self.max_voxels).ravel()[self.inside]
        if cleaned.any():
            self.vectors.append(cleaned)
            self.sources.append(source)

    def finish(self, nms_iou: float, max_proposals: int) -> MaskStack:
        kept = [(values, source) for values, source in zip(suppress_duplicates(self.vectors, nms_iou), self.sources)
                if values is not None]
        self.vectors = []
        quotas = layer_quotas([int(values.max()) for values, _ in kept], max_proposals)
        masks, sources = [], []
        for (values, source), quota in zip(kept, quotas):
            chosen = mask_voxels(values)[:quota]  # numbered largest first
            masks += chosen
            sources += [source] * len(chosen)
        order = sorted(range(len(masks)), key=lambda i: -masks[i].size)
        vectors, placement = pack_vectors([masks[i] for i in order], self.inside.size)
        layers = np.zeros((len(vectors), self.body.size), dtype=np.uint16)
        for index, vector in enumerate(vectors):
            layers[index, self.inside] = vector
        infos = [MaskInfo(layer, label, int(masks[i].size), sources[i]) for i, (layer, label) in zip(order, placement)]
        return MaskStack(layers.reshape(len(vectors), *self.body.shape), infos)
