"""Image features, body mask and compact-watershed supervoxels for the classical proposals.

Input images are nnU-Net-preprocessed (C, z, y, x) arrays, already z-scored per channel,
so intensity differences below are in z-score units; every length is in millimetres and
converted with the (z, y, x) spacing.

Supervoxels are a compact watershed (Neubert & Protzel 2014) of the feature gradient from
seeds on a regular millimetre grid inside the body: boundaries snap to intensity edges,
and in flat regions the cells stay roughly cubic. It is an order of magnitude faster than
scikit-image's SLIC with a mask on 128^3 volumes (0.3 s against 9-55 s, measured).
"""
import numpy as np
from scipy import ndimage
from skimage.filters import threshold_multiotsu, threshold_otsu
from skimage.segmentation import watershed

from nnunet_mass.unlabeled.body_mask import fill_holes, keep_large_components


def sigma_voxels(sigma_mm: float, spacing) -> np.ndarray:
    return np.asarray([sigma_mm / s for s in spacing], dtype=float)


def smooth_features(image: np.ndarray, spacing, sigma_mm: float) -> np.ndarray:
    """Gaussian-smoothed channels, float32 (C, z, y, x)."""
    sigma = sigma_voxels(sigma_mm, spacing)
    if sigma_mm <= 0:
        return image.astype(np.float32, copy=True)
    return np.stack([ndimage.gaussian_filter(channel, sigma, mode="nearest") for channel in image])


def gradient_magnitude(features: np.ndarray, spacing) -> np.ndarray:
    """Euclidean norm over channels and axes of the feature gradient, z-score units per mm (z, y, x)."""
    total = np.zeros(features.shape[1:], dtype=np.float32)
    for channel in features:
        for axis, step in enumerate(spacing):
            derivative = np.gradient(channel, axis=axis) / np.float32(step)
            total += derivative * derivative
    return np.sqrt(total, out=total)


def background_threshold(values: np.ndarray) -> float:
    """Upper edge of the darkest intensity class: the lower of two 3-class Otsu thresholds
    of the values clipped to their 0.5/99.5 percentiles. With three classes the threshold
    falls between air and the darkest tissue even when bright structures (bone, contrast)
    or a clipped fat peak would pull a two-class Otsu threshold into the soft tissue."""
    low, high = np.percentile(values, (0.5, 99.5))
    if high <= low:
        return float(low)
    clipped = np.clip(values, low, high)
    try:
        return float(threshold_multiotsu(clipped, classes=3, nbins=128)[0])
    except ValueError:  # too few distinct values for three classes
        return float(threshold_otsu(clipped))


def body_mask(image: np.ndarray, spacing, smoothing_mm: float, min_border_background: float = 0.05) -> np.ndarray:
    """Bool (z, y, x) body mask of a normalised (C, z, y, x) image.

    - If nnU-Net cropped with a nonzero mask and normalised inside it, the outside is exactly
      0 in every channel: the body is everything else.
    - Otherwise a voxel is body when any smoothed channel is above its `background_threshold`
      (after nnU-Net's normalisation air is the darkest class; CT clipping at foreground
      percentiles can map fat onto air too, which then counts as outside unless enclosed).
    - If under `min_border_background` of the volume's border voxels are outside, no air is
      in view (a scan cropped inside the body): the whole volume is body.
    The large components are kept and holes filled (slice-wise along axis 0, then in 3D).
    """
    exact_zero = (image == 0).all(axis=0)
    if exact_zero.mean() > 0.01:
        foreground = ~exact_zero
    else:
        smoothed = smooth_features(image, spacing, smoothing_mm)
        foreground = np.zeros(image.shape[1:], dtype=bool)
        for channel in smoothed:
            sample = channel.ravel()[:: max(1, channel.size // 1_000_000)]
            foreground |= channel > background_threshold(sample)
        if 1 - border_voxels(foreground).mean() < min_border_background:
            return np.ones(image.shape[1:], dtype=bool)
    if not foreground.any():
        return foreground
    foreground = fill_holes(foreground, 0)
    return keep_large_components(foreground, 0.1)


def border_voxels(mask: np.ndarray) -> np.ndarray:
    """The values of `mask` on the six faces of the volume, flattened."""
    faces = [np.take(mask, index, axis=axis).ravel() for axis in range(mask.ndim) for index in (0, -1)]
    return np.concatenate(faces)


def grid_seeds(body: np.ndarray, spacing, size_mm: float) -> np.ndarray:
    """int32 (z, y, x) marker image: one numbered seed per `size_mm` grid cell, inside the body."""
    steps = [max(1, int(round(size_mm / s))) for s in spacing]
    grid = tuple(slice(min(step // 2, n - 1), None, step) for step, n in zip(steps, body.shape))
    seeds = np.zeros(body.shape, dtype=np.int32)
    on_grid = np.zeros(body.shape, dtype=bool)
    on_grid[grid] = True
    on_grid &= body
    seeds[on_grid] = np.arange(1, int(on_grid.sum()) + 1, dtype=np.int32)
    return seeds


def supervoxels(gradient: np.ndarray, body: np.ndarray, spacing, size_mm: float,
                compactness: float) -> np.ndarray:
    """int32 (z, y, x) supervoxels of about `size_mm` inside `body` (0 outside).

    `compactness` trades edge adherence (0) against cubic cells: it is the gradient (z-score
    per mm) that outweighs a distance of one cell size from the seed.
    """
    seeds = grid_seeds(body, spacing, size_mm)
    if not seeds.any():
        return seeds
    # skimage measures the seed distance in voxels; one cell is about size_mm / mean spacing voxels
    cell_voxels = size_mm / float(np.mean(spacing))
    labels = watershed(gradient, seeds, mask=body, compactness=compactness / cell_voxels)
    return labels.astype(np.int32, copy=False)
