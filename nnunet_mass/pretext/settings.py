"""The knobs of the pretext task: how many masks, how much overlap, how strong the augmentation.

Plain data (no torch, no batchgenerators) so trainers and tests can build, compare and log
them cheaply. Defaults follow MASS (DESIGN 1.2). Every axis order is (z, y, x).
"""
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class AugmentationStrength:
    """One view's augmentation. Ranges are (low, high), drawn uniformly unless noted.

    Spatial: with probability `spatial_p` an affine (per-axis scale from `scale`, rotation
    about each axis up to +-`rotation_deg`) followed by a centre crop to the patch; otherwise
    the window itself. Intensity: each transform runs with probability `intensity_p`.
    """
    spatial_p: float
    scale: tuple[float, float] = (0.7, 1.43)  # > 1 zooms out (bgv2's convention); drawn per axis
    rotation_deg: float = 30.0
    intensity_p: float = 0.2
    multiplicative_brightness: tuple[float, float] = (0.9, 1.1)
    additive_brightness_std: float = 0.1         # shift ~ N(0, std)
    gamma: tuple[float, float] = (0.8, 1.2)
    contrast: tuple[float, float] = (0.8, 1.2)
    blur_sigma: tuple[float, float] = (0.8, 1.2)  # voxels, drawn per axis
    noise_std: tuple[float, float] = (0.0, 0.02)  # the noise std is drawn from this range

    def __post_init__(self):
        for name in ("spatial_p", "intensity_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"AugmentationStrength.{name} must lie in [0, 1], got {getattr(self, name)}")
        for name in ("scale", "multiplicative_brightness", "gamma", "contrast", "blur_sigma", "noise_std"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"AugmentationStrength.{name} must be (low, high) with 0 <= low <= high, "
                                 f"got {getattr(self, name)}")
        if self.scale[0] <= 0 or not 0 <= self.rotation_deg <= 90 or self.additive_brightness_std < 0:
            raise ValueError(f"AugmentationStrength: scale must be > 0, rotation_deg in [0, 90], "
                             f"additive_brightness_std >= 0; got {self}")

    def scaled(self, factor: float) -> "AugmentationStrength":
        """The same ranges with both probabilities multiplied by `factor` (capped at 1)."""
        if factor < 0:
            raise ValueError(f"the augmentation probability factor must be >= 0, got {factor}")
        return replace(self, spatial_p=min(1.0, self.spatial_p * factor),
                       intensity_p=min(1.0, self.intensity_p * factor))


WEAK = AugmentationStrength(spatial_p=0.5)
STRONG = AugmentationStrength(
    spatial_p=0.8, multiplicative_brightness=(0.8, 1.3), additive_brightness_std=0.15, gamma=(0.8, 1.3),
    contrast=(0.8, 1.3), blur_sigma=(0.7, 1.5), noise_std=(0.0, 0.04))


@dataclass(frozen=True)
class PretextSettings:
    """How one pretext sample is drawn.

    num_masks: K, channels per sample (fixed, so batches stack); a case with fewer present
        masks fills the rest with padding channels marked invalid.
    min_overlap: the two windows overlap at least this fraction of the patch on every axis.
    min_reference_voxels: a mask needs this many voxels in the (augmented) reference window
        to define a task. 27 = one 3x3x3 block: the smallest object a 3x3x3 convolution sees
        whole, and about where MASS's own mask generator stops (minimum sizes from ~30 voxels);
        below that the reference shows the network almost nothing to look for.
    whole_fov_task: one channel is an all-ones "whole field of view" task (MASS replaces one
        of its K masks by it).
    anchor_attempts: a window with no mask present at all is drawn again, up to this many
        anchors (then the sample keeps only its whole-FOV task). Mostly matters for sparse
        masks such as imported labels.
    mask_size_bias: masks are drawn with weights voxels ** mask_size_bias; 0 is MASS's
        uniform draw. Classical proposals are mostly supervoxel fragments that look alike
        inside one organ; a positive bias asks for whole structures more often.
    weak / strong: the reference's and the query's augmentation.
    """
    num_masks: int = 13
    min_overlap: float = 0.67
    min_reference_voxels: int = 27
    whole_fov_task: bool = True
    anchor_attempts: int = 3
    mask_size_bias: float = 0.0
    weak: AugmentationStrength = field(default=WEAK)
    strong: AugmentationStrength = field(default=STRONG)

    def __post_init__(self):
        if self.num_masks < (2 if self.whole_fov_task else 1):
            raise ValueError(f"PretextSettings.num_masks must be >= {2 if self.whole_fov_task else 1} "
                             f"(whole_fov_task={self.whole_fov_task}), got {self.num_masks}")
        if not 0 < self.min_overlap <= 1:
            raise ValueError(f"PretextSettings.min_overlap must lie in (0, 1], got {self.min_overlap}")
        if self.min_reference_voxels < 1 or self.anchor_attempts < 1:
            raise ValueError(f"PretextSettings.min_reference_voxels and anchor_attempts must be >= 1, got "
                             f"{self.min_reference_voxels}, {self.anchor_attempts}")

    @property
    def max_drawn_masks(self) -> int:
        """Masks drawn from the case: K, less the whole-FOV channel."""
        return self.num_masks - int(self.whole_fov_task)
