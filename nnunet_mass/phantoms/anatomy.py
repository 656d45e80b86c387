"""Rasterise a `Layout` into a tissue map and a label map, both (z, y, x) arrays.

The tissue map is finer than the labels (kidney cortex vs medulla, cortical vs cancellous
bone, fat, muscle, lung...) because appearance needs it; labels follow from it by lookup.
Structures are painted in a fixed order, later ones winning, and each labeled structure is
clipped to the inside of the body wall so none of them touches air.
"""
from enum import IntEnum

import numpy as np
from scipy import ndimage

from nnunet_mass.phantoms.layout import REACH_ZYX, Ellipsoid, Layout, sample_layout, vertebra_parts

PHANTOM_LABELS = {"background": 0, "liver": 1, "kidney": 2, "spleen": 3, "vessel": 4, "vertebrae": 5,
                  "lesion": 6}


class Tissue(IntEnum):
    AIR = 0
    LUNG = 1
    FAT = 2
    MUSCLE = 3
    SOFT = 4  # unlabeled visceral soft tissue, discs
    LIVER = 5
    LESION = 6
    KIDNEY_CORTEX = 7
    KIDNEY_MEDULLA = 8
    SPLEEN = 9
    VESSEL = 10
    BONE_CANCELLOUS = 11
    BONE_CORTICAL = 12


_TISSUE_LABEL = {Tissue.LIVER: "liver", Tissue.LESION: "lesion", Tissue.KIDNEY_CORTEX: "kidney",
                 Tissue.KIDNEY_MEDULLA: "kidney", Tissue.SPLEEN: "spleen", Tissue.VESSEL: "vessel",
                 Tissue.BONE_CANCELLOUS: "vertebrae", Tissue.BONE_CORTICAL: "vertebrae"}
TISSUE_TO_LABEL = np.array([PHANTOM_LABELS[_TISSUE_LABEL[t]] if t in _TISSUE_LABEL else 0 for t in Tissue],
                           dtype=np.uint8)


def fit_scale(shape, spacing) -> float:
    """1 when the field of view holds the nominal anatomy with a 2-voxel air margin, else the
    uniform shrink factor that makes it fit. Sizes are therefore millimetres (they scale
    with spacing) as long as the field of view is large enough."""
    half_fov = np.asarray(shape) * np.asarray(spacing) / 2 - 2 * np.asarray(spacing)
    return float(min(1.0, *(half_fov / REACH_ZYX)))


class Frame:
    """Voxel centres of a (z, y, x) grid in layout millimetres, centred on the volume."""

    def __init__(self, shape, spacing):
        self.shape = tuple(int(n) for n in shape)
        self.step = np.asarray(spacing, dtype=float) / fit_scale(shape, spacing)
        self.axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(self.shape, self.step)]

    def box(self, center, reach: float) -> tuple:
        """Slices covering a cube of half-size `reach` around `center` (possibly empty)."""
        slices = []
        for n, s, c in zip(self.shape, self.step, center):
            lo = int(np.floor((c - reach) / s + (n - 1) / 2))
            hi = int(np.ceil((c + reach) / s + (n - 1) / 2)) + 1
            slices.append(slice(min(max(lo, 0), n), min(max(hi, 0), n)))
        return tuple(slices)

    def nearest_index(self, point) -> tuple:
        return tuple(int(np.clip(round(p / s + (n - 1) / 2), 0, n - 1))
                     for p, s, n in zip(point, self.step, self.shape))


def paint_ellipsoid(mask: np.ndarray, frame: Frame, e: Ellipsoid) -> np.ndarray:
    """OR the (rotated, possibly superellipsoidal) ellipsoid into `mask`, in place."""
    box = frame.box(e.center, float(np.max(e.semi_axes)))
    if any(s.start >= s.stop for s in box):
        return mask
    dz, dy, dx = (ax[s] - c for ax, s, c in zip(frame.axes, box, e.center))
    dz, dy, dx = dz[:, None, None], dy[None, :, None], dx[None, None, :]  # open grid over the box
    radius = 0.0
    for i in range(3):
        local = (e.rotation[0, i] * dz + e.rotation[1, i] * dy + e.rotation[2, i] * dx) / e.semi_axes[i]
        radius = radius + (local * local if e.exponents[i] == 2 else np.abs(local) ** e.exponents[i])
    mask[box] |= radius <= 1
    return mask


def union(frame: Frame, ellipsoids) -> np.ndarray:
    mask = np.zeros(frame.shape, dtype=bool)
    for e in ellipsoids:
        paint_ellipsoid(mask, frame, e)
    return mask


def body_regions(frame: Frame, layout: Layout) -> tuple:
    """(body, inside the fat layer, inside the muscle wall): nested elliptic torso sections."""
    body = layout.body
    z, y, x = frame.axes
    amp, period, phase = body.wobble
    wobble = (1 + amp * np.sin(2 * np.pi * z / period + phase))[:, None, None]
    dy = (y - body.center_yx[0])[None, :, None]
    dx = (x - body.center_yx[1])[None, None, :]
    semi_y = body.semi_yx[0] * np.where(dy < 0, body.posterior_squash, 1.0) * wobble  # (z, y, 1)
    semi_x = body.semi_yx[1] * wobble  # (z, 1, 1)

    def inside(inset: float) -> np.ndarray:
        return (dy / (semi_y - inset)) ** 2 + (dx / (semi_x - inset)) ** 2 <= 1

    return inside(0.0), inside(body.fat_mm), inside(body.fat_mm + body.muscle_mm)


def vessel_mask(frame: Frame, layout: Layout) -> np.ndarray:
    """A tube through every slice, drawn as one disc per z (the tube is close to parallel to z)."""
    z, y, x = frame.axes
    cy, cx = layout.vessel.center_yx(layout.spine, z)
    return ((y[None, :, None] - cy[:, None, None]) ** 2 + (x[None, None, :] - cx[:, None, None]) ** 2
            <= layout.vessel.radius ** 2)


def spine_mask(frame: Frame, layout: Layout) -> np.ndarray:
    spine, z = layout.spine, frame.axes[0]
    first = int(np.floor((z[0] - spine.phase) / spine.pitch)) - 1
    last = int(np.ceil((z[-1] - spine.phase) / spine.pitch)) + 1
    mask = np.zeros(frame.shape, dtype=bool)
    for k in range(first, last + 1):
        for part in vertebra_parts(spine, k):
            paint_ellipsoid(mask, frame, part)
    return mask


def rasterize(layout: Layout, shape, spacing) -> np.ndarray:
    """Tissue map (uint8 `Tissue` codes, (z, y, x)) of `layout` on the given grid."""
    frame = Frame(shape, spacing)
    tissue = np.full(frame.shape, Tissue.AIR, dtype=np.uint8)
    body, inner, cavity = body_regions(frame, layout)
    tissue[body], tissue[inner], tissue[cavity] = Tissue.FAT, Tissue.MUSCLE, Tissue.SOFT
    tissue[union(frame, layout.paraspinal) & inner] = Tissue.MUSCLE
    tissue[union(frame, layout.lungs) & cavity] = Tissue.LUNG
    tissue[union(frame, [k.fat for k in layout.kidneys]) & cavity] = Tissue.FAT

    bone = spine_mask(frame, layout) & inner
    tissue[bone] = Tissue.BONE_CORTICAL
    tissue[ndimage.binary_erosion(bone)] = Tissue.BONE_CANCELLOUS
    for kidney in layout.kidneys:
        organ = union(frame, [kidney.outer]) & ~union(frame, [kidney.hilum]) & cavity
        tissue[organ] = Tissue.KIDNEY_CORTEX
        tissue[organ & union(frame, [kidney.medulla])] = Tissue.KIDNEY_MEDULLA
    spleen, notch = layout.spleen
    tissue[union(frame, [spleen]) & ~union(frame, [notch]) & cavity] = Tissue.SPLEEN
    tissue[union(frame, layout.liver) & cavity] = Tissue.LIVER
    tissue[vessel_mask(frame, layout) & cavity] = Tissue.VESSEL  # runs through the liver like the IVC
    tissue[union(frame, layout.lesions) & (tissue == Tissue.LIVER)] = Tissue.LESION
    _ensure_every_label(tissue, frame, layout)
    return tissue


def _ensure_every_label(tissue: np.ndarray, frame: Frame, layout: Layout) -> None:
    """On tiny grids a structure can fall between voxel centres; mark the voxel nearest its
    anchor so that every label is present in every case (a no-op at normal sizes)."""
    spine_y, spine_x = layout.spine.center_yx(layout.spine.phase)
    vessel_y, vessel_x = layout.vessel.center_yx(layout.spine, 0.0)
    anchors = {Tissue.LIVER: layout.liver[0].center, Tissue.KIDNEY_CORTEX: layout.kidneys[0].outer.center,
               Tissue.SPLEEN: layout.spleen[0].center, Tissue.VESSEL: (0.0, vessel_y, vessel_x),
               Tissue.BONE_CORTICAL: (layout.spine.phase, spine_y, spine_x), Tissue.LESION: layout.lesions[0].center}
    present = np.unique(TISSUE_TO_LABEL[tissue])
    for code, point in anchors.items():
        if TISSUE_TO_LABEL[code] not in present:
            tissue[frame.nearest_index(point)] = code


def labels_from_tissue(tissue: np.ndarray) -> np.ndarray:
    return TISSUE_TO_LABEL[tissue]


def build_anatomy(rng: np.random.Generator, shape, spacing) -> np.ndarray:
    """Sample a layout and rasterise it: the tissue map, (z, y, x) uint8."""
    return rasterize(sample_layout(rng), shape, spacing)
