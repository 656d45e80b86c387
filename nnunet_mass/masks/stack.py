"""MaskStack: many possibly overlapping binary masks of one case, stored as label layers.

Each layer is a uint16 label map on the case's preprocessed grid (z, y, x): value 0 is no
mask, every other value one mask, so the masks within a layer never overlap while masks
in different layers may. A partition of the image (supervoxels at one scale, the
components of one intensity cluster, an imported label map) fills one layer, which keeps
hundreds of masks in a few layers; a loader crops the layers first and expands only the
masks it draws.
"""
from dataclasses import asdict, dataclass, field, replace

import numpy as np

BBox = tuple[tuple[int, int], ...]  # ((lo, hi), ...) per spatial axis (z, y, x), voxels, hi exclusive


@dataclass(frozen=True)
class MaskInfo:
    layer: int   # index into MaskStack.layers
    label: int   # value of the mask in that layer (>= 1)
    voxels: int  # size on the preprocessed grid
    source: str  # what made it, e.g. "supervoxels_20mm", "intensity_k4", "labels:TotalSegmentator"
    # Tight bounding box of the mask; an empty mask has lo == hi == 0 on every axis. None where
    # unknown (index files written before boxes were stored). Derived from the layers, so it
    # takes no part in equality or hashing.
    bbox: BBox | None = field(default=None, compare=False)

    @classmethod
    def from_dict(cls, entry: dict) -> "MaskInfo":
        """From an index entry (JSON lists become tuples; a missing bbox stays None)."""
        bbox = entry.get("bbox")
        if bbox is not None:
            bbox = tuple((int(lo), int(hi)) for lo, hi in bbox)
        return cls(int(entry["layer"]), int(entry["label"]), int(entry["voxels"]), str(entry["source"]), bbox)


@dataclass
class MaskStack:
    layers: np.ndarray                       # uint16 (L, z, y, x)
    masks: list[MaskInfo] = field(default_factory=list)

    def __post_init__(self):
        if self.layers.ndim != 4 or self.layers.dtype != np.uint16:
            raise ValueError(f"layers must be uint16 (L, z, y, x), got {self.layers.dtype} {self.layers.shape}")

    def __len__(self) -> int:
        return len(self.masks)

    def mask(self, index: int) -> np.ndarray:
        """Mask `index` as a bool array (z, y, x)."""
        info = self.masks[index]
        return self.layers[info.layer] == info.label

    def with_bboxes(self) -> "MaskStack":
        """The same masks with `bbox` computed from the layers (one pass per layer)."""
        boxes = [layer_bboxes(layer) for layer in self.layers]
        empty = tuple((0, 0) for _ in self.layers.shape[1:])
        masks = [replace(m, bbox=boxes[m.layer].get(m.label, empty)) for m in self.masks]
        return MaskStack(self.layers, masks)

    def index_dict(self) -> dict:
        """JSON-serialisable description of the masks (everything but the voxels)."""
        return {"shape": list(self.layers.shape), "masks": [asdict(m) for m in self.masks]}

    @classmethod
    def from_layers(cls, layers: list[np.ndarray], sources: list[str]) -> "MaskStack":
        """Stack label maps (one source name each); every non-zero value becomes one mask."""
        if len(layers) != len(sources):
            raise ValueError(f"{len(layers)} layers but {len(sources)} source names")
        stacked = np.stack([np.asarray(layer, dtype=np.uint16) for layer in layers])
        masks = []
        for index, (layer, source) in enumerate(zip(stacked, sources)):
            counts = np.bincount(layer.ravel())
            masks += [MaskInfo(index, int(label), int(counts[label]), source)
                      for label in np.flatnonzero(counts[1:]) + 1]
        return cls(stacked, masks)


def layer_bboxes(layer: np.ndarray) -> dict[int, BBox]:
    """{label: tight bounding box} of every non-zero label of one label map."""
    from scipy import ndimage

    found = ndimage.find_objects(layer)  # index label - 1 -> tuple of slices, None if absent
    return {index + 1: tuple((s.start, s.stop) for s in slices)
            for index, slices in enumerate(found) if slices is not None}


MAX_LABEL = int(np.iinfo(np.uint16).max)


def pack_first_fit(regions, shape) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
    """Pack possibly overlapping regions, in the given order, into as few label layers as
    first fit allows: each goes into the first uint16 layer of `shape` where it overlaps no
    region and labels are left. Returns the layers and each region's (layer, label).

    A region is (box, voxels) with `layer[box][voxels]` selecting it: `box` a tuple of
    slices (a view), `voxels` a bool crop of that box or an index array into it.
    """
    layers, counts, placement = [], [], []
    for box, voxels in regions:
        index = next((i for i, layer in enumerate(layers)
                      if counts[i] < MAX_LABEL and not layer[box][voxels].any()), None)
        if index is None:
            layers.append(np.zeros(shape, dtype=np.uint16))
            counts.append(0)
            index = len(layers) - 1
        counts[index] += 1
        layers[index][box][voxels] = counts[index]  # layer[box] is a view
        placement.append((index, counts[index]))
    return layers, placement
