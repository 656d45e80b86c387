"""Classical CPU generator of class-agnostic 3D mask proposals (no network weights).

`propose_masks` takes an nnU-Net-preprocessed case (C, z, y, x), z-scored per channel (CT
clipped to its foreground percentiles first), and its (z, y, x) spacing in mm, and returns
a MaskStack of connected, possibly overlapping masks at many scales. All channels are used:
features are the lightly smoothed channels, differences are Euclidean over channels.

1. Body: voxels above the darkest intensity class of any channel, large components, holes
   filled (supervoxels.body_mask). Everything below stays inside it.
2. Hierarchical merging ("merge_<criterion>_<threshold>"): base regions (compact-watershed
   supervoxels of `base_size_mm`, split along a k-means clustering of the intensities) are
   merged by contrast, once with a lenient and once with a strict criterion
   (merging.py); the partition reached at each threshold is one layer: organs, vessels,
   lesions, sub-regions.
3. Intensity clustering ("intensity_k<k>"): k-means over the body voxels for each k, then
   the connected components of every cluster.
4. Hole filling ("filled"): regions of 2. and 3. whose filled version adds enough (a bright
   cortex around a darker medulla becomes the kidney, a bone shell the vertebra).
5. Supervoxels ("supervoxels_<size>mm") at several physical sizes: sub-regions and
   background tissue, lowest priority.

Every mask is then cut to its largest face-connected piece, kept if its size is within
[max(min_size_ml, min_voxels), max_fraction_of_body], dropped if its IoU with a mask of an
earlier layer reaches `nms_iou`, the count capped at `max_proposals` (the most fragmented
layers lose their smallest masks first), and the survivors packed into as few uint16 label
layers as possible (pruning.py). Deterministic for fixed settings.

Intensity settings are in z-score units (the input is normalised), lengths in mm, volumes
in ml, so one setting serves CT and MR at any spacing. Measured on the synthetic phantoms
(benchmarks/bench_mask_proposals.py): 64^3 CT about 1 s and 900 masks, 128^3 CT about 6 s
and 750 masks on one core, with about 110 bytes of numpy memory per voxel at the peak.

A constant image (or one whose body mask is empty) has no structure: the result is an empty
MaskStack (zero layers), not an error. Malformed input or settings raise ValueError.
"""
import argparse
import dataclasses
import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from nnunet_mass.masks.merging import CRITERIA, merge_hierarchies
from nnunet_mass.masks.pruning import ProposalBuilder
from nnunet_mass.masks.regions import components, filled_regions, kmeans_clusters
from nnunet_mass.masks.stack import MaskStack, pack_first_fit
from nnunet_mass.masks.supervoxels import body_mask, gradient_magnitude, smooth_features, supervoxels

GENERATOR_NAME = "classical-v1"


def _setting(default, help_text: str):
    return field(default=default, metadata={"help": help_text})


@dataclass
class ProposalSettings:
    """Every length in mm, volume in ml, intensity difference in z-score units."""
    smoothing_mm: float = _setting(0.5, "Gaussian sigma of the feature smoothing, mm")
    body_smoothing_mm: float = _setting(3.0, "Gaussian sigma before the body threshold, mm")
    supervoxel_sizes_mm: tuple = _setting((16.0, 32.0, 64.0), "sizes of the supervoxel layers, mm")
    supervoxel_compactness: float = _setting(0.1, "gradient (z-score/mm) that outweighs one cell size of distance "
                                                  "from a supervoxel's seed; 0 follows edges only")
    base_size_mm: float = _setting(4.0, "supervoxel size of the base regions the merging starts from, mm")
    max_base_regions: int = _setting(30000, "the base supervoxels grow on large bodies to stay below this count")
    base_clusters: int = _setting(8, "k of the k-means clustering that splits the base supervoxels (0: none)")
    intensity_clusters: tuple = _setting((3, 5), "k of each clustering whose connected components are masks")
    merge_criteria: tuple = _setting(("lenient", "strict"), "merge hierarchies to build: lenient merges on the "
                                                             "smaller of mean difference and edge contrast, strict "
                                                             "on the larger")
    merge_thresholds: tuple = _setting((0.05, 0.1, 0.2, 0.4, 0.8, 1.6), "contrast levels (z-score) at which a "
                                                                         "merge partition becomes a layer")
    reliable_size_ml: float = _setting(0.5, "regions smaller than this (ml) merge more readily")
    edge_radius_mm: float = _setting(1.5, "edge contrast samples this far either side of a boundary, mm")
    fill_holes: bool = _setting(True, "add hole-filled versions of regions that enclose others")
    min_size_ml: float = _setting(0.1, "smallest mask, ml")
    min_voxels: int = _setting(20, "smallest mask in voxels, whatever the spacing")
    max_fraction_of_body: float = _setting(0.5, "largest mask, as a fraction of the body volume")
    nms_iou: float = _setting(0.9, "a mask with this IoU to an earlier one is dropped")
    max_proposals: int = _setting(1000, "most masks per case")
    cluster_seed: int = _setting(0, "seed of the k-means voxel sampling")

    def validate(self) -> "ProposalSettings":
        """self, or ValueError naming the first bad field."""
        positive = ["body_smoothing_mm", "base_size_mm", "max_base_regions", "reliable_size_ml",
                    "edge_radius_mm", "max_fraction_of_body", "nms_iou", "max_proposals"]
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"ProposalSettings.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ["smoothing_mm", "supervoxel_compactness", "min_size_ml", "min_voxels"]:
            if not getattr(self, name) >= 0:
                raise ValueError(f"ProposalSettings.{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ["supervoxel_sizes_mm", "merge_thresholds"]:
            if not all(v > 0 for v in getattr(self, name)):
                raise ValueError(f"ProposalSettings.{name} must hold values > 0, got {getattr(self, name)!r}")
        if not all(int(k) == k and k >= 2 for k in self.intensity_clusters):
            raise ValueError(f"ProposalSettings.intensity_clusters must be integers >= 2, got {self.intensity_clusters!r}")
        if set(self.merge_criteria) - set(CRITERIA):
            raise ValueError(f"ProposalSettings.merge_criteria must be among {CRITERIA}, got {self.merge_criteria!r}")
        if self.nms_iou > 1 or self.max_fraction_of_body > 1 or self.max_proposals > np.iinfo(np.uint16).max:
            raise ValueError("ProposalSettings: nms_iou and max_fraction_of_body must be <= 1, "
                             f"max_proposals <= 65535; got {self.nms_iou}, {self.max_fraction_of_body}, "
                             f"{self.max_proposals}")
        return self


def check_inputs(image: np.ndarray, spacing_zyx) -> tuple:
    """(float32 (C, z, y, x) image, float spacing tuple); ValueError naming the problem."""
    image = np.asarray(image)
    if image.ndim != 4:
        raise ValueError(f"image must be (C, z, y, x), got shape {image.shape}; add a channel axis with image[None]")
    if image.shape[0] < 1 or min(image.shape[1:]) < 2:
        raise ValueError(f"image needs >= 1 channel and >= 2 voxels per spatial axis, got shape {image.shape}")
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise ValueError(f"image must be real-valued, got dtype {image.dtype}")
    image = image.astype(np.float32, copy=False)
    if not np.isfinite(image).all():
        raise ValueError("image contains NaN or infinite values; fix the preprocessing first")
    spacing = tuple(float(s) for s in np.asarray(spacing_zyx, dtype=float).ravel())
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing_zyx must be 3 positive finite mm values (z, y, x), got {spacing_zyx}")
    return image, spacing


def propose_masks(image: np.ndarray, spacing_zyx, settings: ProposalSettings | None = None) -> MaskStack:
    """Class-agnostic mask proposals of one preprocessed case (see the module docstring)."""
    settings = (settings or ProposalSettings()).validate()
    image, spacing = check_inputs(image, spacing_zyx)
    empty = MaskStack(np.zeros((0, *image.shape[1:]), dtype=np.uint16), [])
    if all(np.ptp(channel) == 0 for channel in image):
        return empty
    body = body_mask(image, spacing, settings.body_smoothing_mm)
    if not body.any():
        return empty
    voxel_ml = math.prod(spacing) / 1000.0
    min_voxels = max(settings.min_voxels, math.ceil(settings.min_size_ml / voxel_ml), 1)
    builder = ProposalBuilder(body, min_voxels, int(settings.max_fraction_of_body * body.sum()))
    features = smooth_features(image, spacing, settings.smoothing_mm)
    gradient = gradient_magnitude(features, spacing)

    filled = FilledRegions(min_voxels, 1 / settings.nms_iou - 1)
    regions = itertools.chain(
        merge_layers(features, gradient, body, spacing, settings),
        ((components(kmeans_clusters(features, body, k, settings.cluster_seed)), f"intensity_k{k}")
         for k in settings.intensity_clusters))
    for labels, source in regions:  # one full-size layer at a time
        builder.add(labels, source)
        if settings.fill_holes:
            filled.collect(labels)
    for layer in filled.layers(body.shape):
        builder.add(layer, "filled")
    for size in sorted(settings.supervoxel_sizes_mm):
        builder.add(supervoxels(gradient, body, spacing, size, settings.supervoxel_compactness),
                    f"supervoxels_{size:g}mm")
    return builder.finish(settings.nms_iou, settings.max_proposals)


def base_regions(features: np.ndarray, gradient: np.ndarray, body: np.ndarray, spacing,
                 settings: ProposalSettings) -> np.ndarray:
    """Fine supervoxels split along a fine intensity clustering (int32, 0 outside), so that no
    base region straddles a weak edge the watershed missed."""
    cell_mm3 = float(body.sum()) * math.prod(spacing) / settings.max_base_regions
    size = max(settings.base_size_mm, cell_mm3 ** (1 / 3))
    base = supervoxels(gradient, body, spacing, size, settings.supervoxel_compactness)
    if settings.base_clusters > 1:
        bins = kmeans_clusters(features, body, settings.base_clusters, settings.cluster_seed)
        base = components(base.astype(np.int64) * (settings.base_clusters + 1) + bins)
    return base


def merge_layers(features, gradient, body, spacing, settings: ProposalSettings):
    """Yields (partition, source) for every merge criterion and threshold."""
    if not settings.merge_thresholds or not settings.merge_criteria:
        return
    base = base_regions(features, gradient, body, spacing, settings)
    reliable_voxels = settings.reliable_size_ml * 1000.0 / math.prod(spacing)
    for criterion, threshold, partition in merge_hierarchies(base, features, spacing, settings.merge_thresholds,
                                                             reliable_voxels, settings.edge_radius_mm,
                                                             settings.merge_criteria):
        yield partition, f"merge_{criterion}_{threshold:g}"


class FilledRegions:
    """Hole-filled versions of regions, collected over layers; each distinct one once.

    A filled region is kept if filling adds at least `min_gain` voxels and `relative_gain`
    times the region's size: with relative_gain = 1 / nms_iou - 1 a smaller gain would leave
    it a duplicate of the region itself."""

    def __init__(self, min_gain: int, relative_gain: float):
        self.min_gain, self.relative_gain = min_gain, relative_gain
        self.crops, self.seen = [], set()

    def collect(self, labels: np.ndarray) -> None:
        for box, crop in filled_regions(labels, self.min_gain, self.relative_gain):
            key = (tuple((s.start, s.stop) for s in box), int(crop.sum()))
            if key not in self.seen:
                self.seen.add(key)
                self.crops.append((box, crop))

    def layers(self, shape) -> list:
        """uint16 label layers holding the filled regions (largest first), each in the first layer it does not overlap."""
        return pack_first_fit(sorted(self.crops, key=lambda item: -int(item[1].sum())), shape)[0]


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """One --<field> flag per ProposalSettings field, defaulting to the dataclass value."""
    group = parser.add_argument_group("classical mask proposals")
    for setting in dataclasses.fields(ProposalSettings):
        default, flag, text = setting.default, f"--{setting.name}", setting.metadata.get("help", "")
        if isinstance(default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=f"{text} [{default}]")
        elif isinstance(default, tuple):
            group.add_argument(flag, type=type(default[0]) if default else float, nargs="*", default=default,
                               metavar="V", help=f"{text} [{' '.join(str(v) for v in default)}]")
        else:
            group.add_argument(flag, type=type(default), default=default, help=f"{text} [{default}]")


def settings_from_args(args) -> ProposalSettings:
    """ProposalSettings from parsed arguments (missing attributes keep their defaults)."""
    values = {}
    for setting in dataclasses.fields(ProposalSettings):
        if hasattr(args, setting.name):
            value = getattr(args, setting.name)
            values[setting.name] = tuple(value) if isinstance(setting.default, tuple) else value
    return ProposalSettings(**values)
