"""Intensities for a tissue map: per-tissue means, low-frequency texture, noise, bias field.

CT: Hounsfield units (portal-venous-like contrast: enhanced vessel, kidneys and spleen),
    additive Gaussian noise of 10-20 HU, clipped to the scanner range [-1024, 3071].
MR: T1-weighted-like arbitrary units: fat and fatty marrow bright, flowing blood and
    cortical bone dark, air near 0; a random global gain, a smooth multiplicative bias
    field and Rician noise (magnitude of complex Gaussian noise), so values stay positive.
Every function takes the (z, y, x) tissue map and spacing in mm, (z, y, x).
"""
import numpy as np
from scipy import ndimage

from nnunet_mass.phantoms.anatomy import Tissue

MODALITIES = ("CT", "MR")

# Per tissue: (mean, per-case jitter std of the mean, texture amplitude); texture is the std
# of the smooth per-tissue fluctuation, in the same unit as the mean.
_CT = {Tissue.AIR: (-1000, 0, 0), Tissue.LUNG: (-850, 20, 30), Tissue.FAT: (-100, 8, 10),
       Tissue.MUSCLE: (55, 4, 8), Tissue.SOFT: (40, 4, 10), Tissue.LIVER: (95, 8, 8),
       Tissue.LESION: (45, 8, 10), Tissue.KIDNEY_CORTEX: (165, 12, 8), Tissue.KIDNEY_MEDULLA: (115, 10, 8),
       Tissue.SPLEEN: (125, 8, 6), Tissue.VESSEL: (210, 15, 5), Tissue.BONE_CANCELLOUS: (450, 30, 50),
       Tissue.BONE_CORTICAL: (900, 40, 40)}
_MR = {Tissue.AIR: (0, 0, 0), Tissue.LUNG: (25, 5, 8), Tissue.FAT: (900, 40, 40),
       Tissue.MUSCLE: (320, 20, 15), Tissue.SOFT: (380, 20, 25), Tissue.LIVER: (520, 25, 20),
       Tissue.LESION: (280, 25, 20), Tissue.KIDNEY_CORTEX: (470, 25, 20), Tissue.KIDNEY_MEDULLA: (330, 20, 15),
       Tissue.SPLEEN: (410, 20, 15), Tissue.VESSEL: (60, 10, 10), Tissue.BONE_CANCELLOUS: (620, 30, 40),
       Tissue.BONE_CORTICAL: (40, 8, 8)}
_LOOKS = {"CT": _CT, "MR": _MR}


def smooth_field(rng: np.random.Generator, shape, spacing, correlation_mm: float) -> np.ndarray:
    """Zero-mean, unit-std float32 noise that varies over about `correlation_mm`: white noise on a
    coarse grid, smoothed, then trilinearly upsampled (much cheaper than smoothing at full size)."""
    coarse_shape = [max(2, int(np.ceil(n * s / correlation_mm))) + 1 for n, s in zip(shape, spacing)]
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape, dtype=np.float32), 0.7)
    field = ndimage.zoom(coarse, [n / c for n, c in zip(shape, coarse_shape)], order=1)
    return (field - field.mean()) / max(float(field.std()), 1e-6)


def tissue_intensities(rng: np.random.Generator, tissue: np.ndarray, spacing, modality: str) -> np.ndarray:
    """Piecewise-smooth image: per-case jittered tissue means plus a per-tissue texture that
    mixes a coarse (~15 mm) and a fine (~5 mm) field in a per-case random proportion."""
    look = np.array([_LOOKS[modality][t] for t in Tissue], dtype=np.float32)  # (tissues, 3)
    means = look[:, 0] + np.clip(rng.standard_normal(len(Tissue)), -2, 2).astype(np.float32) * look[:, 1]
    amplitude = look[:, 2] * rng.uniform(0.7, 1.3, len(Tissue)).astype(np.float32)
    mix = rng.uniform(0, np.pi / 2, len(Tissue))
    coarse_weight = (amplitude * np.cos(mix)).astype(np.float32)
    fine_weight = (amplitude * np.sin(mix)).astype(np.float32)
    coarse = smooth_field(rng, tissue.shape, spacing, 15.0)
    fine = smooth_field(rng, tissue.shape, spacing, 5.0)
    image = means[tissue] + coarse_weight[tissue] * coarse + fine_weight[tissue] * fine
    return ndimage.gaussian_filter(image, 0.5)  # partial-volume softening of the tissue edges


def finish_ct(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    noise_hu = rng.uniform(10, 20)
    image = image + noise_hu * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(image, -1024, 3071)


def finish_mr(rng: np.random.Generator, image: np.ndarray, spacing) -> np.ndarray:
    signal = image * np.float32(rng.uniform(0.6, 1.6))  # arbitrary scanner scaling
    bias = np.exp(np.float32(rng.uniform(0.1, 0.25)) * smooth_field(rng, image.shape, spacing, 80.0))
    signal = np.maximum(signal * bias, 0)
    sigma = np.float32(rng.uniform(0.015, 0.035)) * np.percentile(signal, 99)
    real = signal + sigma * rng.standard_normal(image.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(image.shape, dtype=np.float32)
    return np.sqrt(real * real + imaginary * imaginary)


def render(rng: np.random.Generator, tissue: np.ndarray, spacing, modality: str) -> np.ndarray:
    """float32 image of the (z, y, x) tissue map in `modality` ("CT" or "MR")."""
    image = tissue_intensities(rng, tissue, spacing, modality)
    image = finish_ct(rng, image) if modality == "CT" else finish_mr(rng, image, spacing)
    return image.astype(np.float32, copy=False)
