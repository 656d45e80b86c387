"""One synthetic case: anatomy first, then appearance, from one generator.

The anatomy is drawn before any intensity, so two generators in the same state give the
same label map in CT and in MR.
"""
import numpy as np

from nnunet_mass.phantoms.anatomy import build_anatomy, labels_from_tissue
from nnunet_mass.phantoms.appearance import MODALITIES, render

MIN_SIZE = 16  # voxels per axis; below this the miniature anatomy is mostly partial volume


def check_phantom_args(modality: str, shape, spacing) -> tuple:
    """Validated (modality, shape, spacing); raises ValueError naming the bad argument."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    shape, spacing = tuple(shape), tuple(spacing)
    if len(shape) != 3 or any(int(n) != n or n < MIN_SIZE for n in shape):
        raise ValueError(f"shape must be 3 integers (z, y, x), each >= {MIN_SIZE}, got {shape}")
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be 3 positive finite millimetre values (z, y, x), got {spacing}")
    return modality, tuple(int(n) for n in shape), tuple(float(s) for s in spacing)


def make_phantom(rng: np.random.Generator, modality: str = "CT", shape=(64, 64, 64),
                 spacing=(2.5, 2.0, 2.0)) -> tuple[np.ndarray, np.ndarray]:
    """(image float32, labels uint8), both (z, y, x); spacing in mm, (z, y, x).

    Labels follow `PHANTOM_LABELS`. CT images are in HU, MR images in arbitrary positive units.
    """
    modality, shape, spacing = check_phantom_args(modality, shape, spacing)
    tissue = build_anatomy(rng, shape, spacing)
    return render(rng, tissue, spacing, modality), labels_from_tissue(tissue)
