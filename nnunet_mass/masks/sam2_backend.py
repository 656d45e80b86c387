"""Optional SAM2 backend for class-agnostic 3D mask proposals (needs a user-supplied checkpoint).

The MASS recipe on an nnU-Net-preprocessed case (C, z, y, x) with (z, y, x) spacing in mm:

1. seed slices along axis 0 (the out-of-plane axis nnU-Net puts first) every
   `slice_interval_mm` inside the body;
2. one channel windowed to uint8 RGB by robust percentiles of the body's intensities;
3. SAM2's automatic 2D masks on every seed slice (tiny ones and ones mostly outside the
   body dropped);
4. each seed mask propagated up and down through the volume by SAM2's video predictor,
   the z-stack played as a video -> one 3D mask;
5. clean-up: the largest face-connected 3D component that touches the seed slice, optional
   hole filling, at least `min_size_ml` (and `min_voxels`);
6. near-duplicate suppression across all 3D masks (IoU >= `nms_iou`, the earlier one stays),
   then the `max_proposals` largest;
7. exact packing into uint16 label layers (each mask in the first layer it does not
   overlap), every mask with source "sam2".

All SAM2 calls sit behind `Sam2Models` (`automatic_masks`, `open_volume(...).propagate`),
so the pipeline runs with any object of that shape; `load_sam2_models` builds the real one.
`sam2` and torch are imported only there. Models are loaded once per process and reused
for every case (`models_for`). SAM2 needs a CUDA GPU for useful speed; run the command with
`-np 1` so that one process holds the GPU.
"""
import argparse
import contextlib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from nnunet_mass.masks.stack import MaskStack, pack_first_fit

GENERATOR_NAME = "sam2-v1"
SOURCE = "sam2"
INSTALL_HINT = ('install SAM2 with  pip install "nnunet-mass[sam2]"  (the "sam2" package on PyPI, a third-party '
                'upload of Meta\'s code) or from the official repository:  pip install '
                '"git+https://github.com/facebookresearch/sam2.git" . SAM2 needs PyTorch with CUDA for useful '
                'speed (it runs on CPU, but very slowly)')
CHECKPOINT_HINT = ("download a SAM2 checkpoint yourself from the official SAM2 release (the \"Download "
                   "Checkpoints\" section of https://github.com/facebookresearch/sam2, e.g. sam2.1_hiera_large.pt) "
                   "and pass its path with --sam2-checkpoint")
_CONFIG_SIZES = {"tiny": "t", "small": "s", "base_plus": "b+", "large": "l"}


@dataclass
class Sam2Settings:
    """Lengths in mm, areas in mm^2, volumes in ml; intensities in the image's (z-score) units."""
    checkpoint: str  # path of a SAM2 checkpoint (.pt) the user downloaded
    config: str | None = None  # SAM2 model config, e.g. configs/sam2.1/sam2.1_hiera_l.yaml; None: from the file name
    device: str | None = None  # torch device; None: "cuda" if available, else "cpu"
    slice_interval_mm: float = 30.0  # distance between seed slices along axis 0
    points_per_side: int = 32  # SAM2 automatic mask generator: point grid per seed slice
    pred_iou_thresh: float = 0.8  # ... minimum predicted mask quality
    stability_score_thresh: float = 0.95  # ... minimum mask stability
    max_masks_per_slice: int = 100  # best-scored 2D masks kept per seed slice
    min_seed_area_mm2: float = 20.0  # smallest 2D seed mask
    min_body_fraction: float = 0.5  # a seed mask must lie at least this much inside the body
    objects_per_batch: int = 16  # seed masks propagated together (memory: this many bool volumes)
    offload_to_cpu: bool = True  # keep the video frames and tracking state in CPU memory
    min_size_ml: float = 0.1  # smallest 3D mask
    min_voxels: int = 30  # smallest 3D mask on the grid, whatever the spacing
    fill_holes: bool = False  # fill enclosed holes of each 3D mask
    nms_iou: float = 0.95  # a 3D mask this similar to an earlier one is dropped
    max_proposals: int = 1000  # the largest masks are kept
    channel: int = 0  # image channel shown to SAM2
    window_percentiles: tuple = (0.5, 99.5)  # body intensity percentiles mapped to 0 and 255
    window: tuple | None = None  # explicit (low, high) intensities instead of the percentiles
    body_smoothing_mm: float = 3.0  # Gaussian sigma before the body threshold


@dataclass(frozen=True)
class Crop:
    """One 3D mask: a bool array inside a box (z, y, x slices) of the case's grid."""
    box: tuple
    voxels: np.ndarray
    size: int


# ---------------------------------------------------------------- pipeline (pure functions)

def propose_masks_sam2(image: np.ndarray, spacing_zyx, settings: Sam2Settings | None = None,
                       models=None) -> MaskStack:
    """SAM2 mask proposals of one preprocessed case (see the module docstring).

    `models` defaults to the process-wide SAM2 models of `settings` (loaded on first use).
    """
    if not isinstance(settings, Sam2Settings):
        raise ValueError("the SAM2 backend needs Sam2Settings(checkpoint=...) with the path of a SAM2 checkpoint; "
                         + CHECKPOINT_HINT)
    image, spacing = check_inputs(image, spacing_zyx, settings.channel)
    shape = image.shape[1:]
    from nnunet_mass.masks.supervoxels import body_mask

    body = body_mask(image, spacing, settings.body_smoothing_mm)
    if not body.any():
        return stack_from_crops([], shape)
    channel = image[settings.channel]
    low, high = settings.window or intensity_window(channel, body, settings.window_percentiles)
    volume_rgb = to_uint8_rgb(channel, low, high)
    seeds = seed_slices(body, spacing[0], settings.slice_interval_mm)
    min_voxels = max(settings.min_voxels, math.ceil(settings.min_size_ml * 1000.0 / math.prod(spacing)))
    models = models_for(settings) if models is None else models
    crops = track_seed_masks(models, volume_rgb, seeds, body, spacing, settings, min_voxels)
    crops = suppress_near_duplicates(crops, settings.nms_iou)
    crops = sorted(crops, key=lambda crop: -crop.size)[:settings.max_proposals]
    return stack_from_crops(crops, shape)


def check_inputs(image: np.ndarray, spacing_zyx, channel: int = 0) -> tuple:
    """(float32 (C, z, y, x) image, float spacing tuple); ValueError naming the problem."""
    image = np.asarray(image)
    if image.ndim != 4 or min(image.shape[1:], default=0) < 2:
        raise ValueError(f"image must be (C, z, y, x) with >= 2 voxels per spatial axis, got shape {image.shape}")
    if not 0 <= channel < image.shape[0]:
        raise ValueError(f"channel {channel} does not exist in an image with {image.shape[0]} channel(s)")
    spacing = tuple(float(s) for s in np.asarray(spacing_zyx, dtype=float).ravel())
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing_zyx must be 3 positive finite mm values (z, y, x), got {spacing_zyx}")
    return image.astype(np.float32, copy=False), spacing


def seed_slices(body: np.ndarray, spacing_z: float, interval_mm: float) -> list[int]:
    """Indices along axis 0, `interval_mm` apart, centred on the body's extent along that axis."""
    if interval_mm <= 0:
        raise ValueError(f"slice_interval_mm must be > 0, got {interval_mm}")
    occupied = np.flatnonzero(body.reshape(body.shape[0], -1).any(axis=1))
    if occupied.size == 0:
        return []
    first, last = int(occupied[0]), int(occupied[-1])
    extent_mm = (last - first) * spacing_z
    count = int(math.floor(extent_mm / interval_mm + 1e-9)) + 1
    margin_mm = (extent_mm - (count - 1) * interval_mm) / 2
    positions = (first + (margin_mm + interval_mm * np.arange(count)) / spacing_z).round().astype(int)
    return sorted(set(int(p) for p in np.clip(positions, first, last)))


def intensity_window(channel: np.ndarray, body: np.ndarray, percentiles=(0.5, 99.5)) -> tuple:
    """(low, high) intensities: the given percentiles of the body's voxels (a sample of them)."""
    values = channel[body]
    values = values[:: max(1, values.size // 2_000_000)]
    low, high = (float(v) for v in np.percentile(values, percentiles))
    return (low, high) if high > low else (low, low + 1.0)


def to_uint8_rgb(slices: np.ndarray, low: float, high: float) -> np.ndarray:
    """uint8 (..., 3): intensities from [low, high] mapped linearly onto 0..255, grey in all three channels."""
    scaled = np.clip((slices.astype(np.float32) - low) * (255.0 / (high - low)), 0, 255)
    grey = np.rint(scaled).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)  # (..., y, x) -> (..., y, x, 3)


def select_seed_masks(masks: list, body_slice: np.ndarray, min_pixels: int, min_body_fraction: float,
                      max_count: int) -> list:
    """The first `max_count` 2D masks with >= min_pixels pixels, >= min_body_fraction of them in the body."""
    kept = []
    for mask in masks:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != body_slice.shape:
            raise ValueError(f"a 2D mask has shape {mask.shape}, the slice {body_slice.shape}")
        area = int(np.count_nonzero(mask))
        if area >= max(min_pixels, 1) and np.count_nonzero(mask & body_slice) >= min_body_fraction * area:
            kept.append(mask)
        if len(kept) == max_count:
            break
    return kept


def track_seed_masks(models, volume_rgb: np.ndarray, seeds: list, body: np.ndarray, spacing,
                     settings: Sam2Settings, min_voxels: int) -> list[Crop]:
    """Cleaned 3D masks grown from the automatic 2D masks of every seed slice."""
    min_pixels = math.ceil(settings.min_seed_area_mm2 / (spacing[1] * spacing[2]))
    batch = max(1, settings.objects_per_batch)
    crops = []
    with models.open_volume(volume_rgb) as video:
        for seed in seeds:
            masks = select_seed_masks(models.automatic_masks(volume_rgb[seed]), body[seed], min_pixels,
                                      settings.min_body_fraction, settings.max_masks_per_slice)
            for start in range(0, len(masks), batch):
                for mask in video.propagate(seed, masks[start:start + batch]):
                    if np.shape(mask) != body.shape:
                        raise ValueError(f"propagation returned shape {np.shape(mask)}, the volume is {body.shape}")
                    crop = clean_mask(np.asarray(mask, dtype=bool), seed, min_voxels, settings.fill_holes)
                    if crop is not None:
                        crops.append(crop)
    return crops


def bounding_box(mask: np.ndarray) -> tuple | None:
    """Tight (z, y, x) slices around the True voxels, None when there are none."""
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hits.size == 0:
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def clean_mask(mask: np.ndarray, seed_index: int, min_voxels: int, fill_holes: bool = False) -> Crop | None:
    """The largest face-connected component of a bool (z, y, x) mask that touches slice
    `seed_index` (holes filled if asked), or None if none does or it has < min_voxels voxels."""
    if not mask[seed_index].any():
        return None
    box = bounding_box(mask)
    pieces, _ = ndimage.label(mask[box])
    touching = np.unique(pieces[seed_index - box[0].start])
    touching = touching[touching > 0]
    sizes = np.bincount(pieces.ravel())
    keep = pieces == touching[np.argmax(sizes[touching])]
    if fill_holes:
        keep = ndimage.binary_fill_holes(keep)
    size = int(np.count_nonzero(keep))
    if size < min_voxels:
        return None
    inner = bounding_box(keep)
    outer = tuple(slice(o.start + i.start, o.start + i.stop) for o, i in zip(box, inner))
    return Crop(outer, np.ascontiguousarray(keep[inner]), size)


def crop_iou(a: Crop, b: Crop) -> float:
    """Intersection over union of two crops on the same grid."""
    overlap = tuple(slice(max(p.start, q.start), min(p.stop, q.stop)) for p, q in zip(a.box, b.box))
    if any(s.start >= s.stop for s in overlap):
        return 0.0
    in_a = tuple(slice(s.start - p.start, s.stop - p.start) for s, p in zip(overlap, a.box))
    in_b = tuple(slice(s.start - q.start, s.stop - q.start) for s, q in zip(overlap, b.box))
    intersection = int(np.count_nonzero(a.voxels[in_a] & b.voxels[in_b]))
    return intersection / (a.size + b.size - intersection)


def suppress_near_duplicates(crops: list[Crop], nms_iou: float) -> list[Crop]:
    """The crops in order, without any whose IoU with an earlier kept crop is >= nms_iou."""
    kept = []
    for crop in crops:
        # IoU <= smaller/larger size, so only crops of similar size can be duplicates
        similar = (k for k in kept if min(k.size, crop.size) >= nms_iou * max(k.size, crop.size))
        if all(crop_iou(crop, k) < nms_iou for k in similar):
            kept.append(crop)
    return kept


def pack_layers(crops: list[Crop], shape) -> list[np.ndarray]:
    """uint16 (z, y, x) label layers holding every crop exactly, each in the first layer
    where it overlaps no mask (largest crops first); labels count 1.. per layer."""
    return pack_first_fit([(c.box, c.voxels) for c in sorted(crops, key=lambda c: -c.size)], shape)[0]


def stack_from_crops(crops: list[Crop], shape, source: str = SOURCE) -> MaskStack:
    layers = pack_layers(crops, shape)
    if not layers:
        return MaskStack(np.zeros((0, *shape), dtype=np.uint16), [])
    return MaskStack.from_layers(layers, [source] * len(layers))


# ---------------------------------------------------------------- SAM2 adapter (lazy imports)

class Sam2Models:
    """SAM2's automatic mask generator and video predictor behind two small calls."""

    def __init__(self, mask_generator, video_predictor, device: str, offload_to_cpu: bool = True):
        self.mask_generator = mask_generator
        self.video_predictor = video_predictor
        self.device = device
        self.offload_to_cpu = offload_to_cpu

    def automatic_masks(self, rgb_slice: np.ndarray) -> list[np.ndarray]:
        """Bool (y, x) masks of a uint8 (y, x, 3) slice, best predicted quality first."""
        import torch

        with torch.inference_mode(), _autocast(self.device):
            records = self.mask_generator.generate(np.ascontiguousarray(rgb_slice))
        records = sorted(records, key=lambda r: -float(r.get("predicted_iou", 0.0)))
        return [np.asarray(r["segmentation"], dtype=bool) for r in records]

    @contextlib.contextmanager
    def open_volume(self, volume_rgb: np.ndarray):
        """A tracker over a uint8 (z, y, x, 3) volume played as a video (frames = axis 0).

        SAM2's video predictor reads a folder of `<index>.jpg` frames: they are written to a
        private temporary folder, removed on exit."""
        import tempfile

        import torch

        with tempfile.TemporaryDirectory(prefix="nnunet_mass_sam2_") as folder:
            write_jpeg_frames(volume_rgb, folder)
            with torch.inference_mode(), _autocast(self.device):
                state = self.video_predictor.init_state(folder, offload_video_to_cpu=self.offload_to_cpu,
                                                        offload_state_to_cpu=self.offload_to_cpu)
            yield Sam2Video(self.video_predictor, state, volume_rgb.shape[:3], self.device)


class Sam2Video:
    """Propagates seed masks of one volume with SAM2's video predictor."""

    def __init__(self, predictor, state, shape, device: str):
        self.predictor, self.state, self.shape, self.device = predictor, state, tuple(shape), device

    def propagate(self, seed_index: int, seed_masks: list) -> list[np.ndarray]:
        """One bool (z, y, x) mask per bool (y, x) seed mask on slice `seed_index`, tracked
        towards higher then lower slice indices."""
        import torch

        with torch.inference_mode(), _autocast(self.device):
            return self._propagate(int(seed_index), seed_masks)

    def _propagate(self, seed_index: int, seed_masks: list) -> list[np.ndarray]:
        self.predictor.reset_state(self.state)
        for obj_id, mask in enumerate(seed_masks, start=1):
            self.predictor.add_new_mask(self.state, frame_idx=seed_index, obj_id=obj_id, mask=np.asarray(mask, bool))
        out = np.zeros((len(seed_masks), *self.shape), dtype=bool)
        for reverse in (False, True):
            frames = self.predictor.propagate_in_video(self.state, start_frame_idx=seed_index, reverse=reverse)
            for frame_index, obj_ids, logits in frames:  # logits: (objects, 1, y, x)
                masks = (logits[:, 0] > 0).cpu().numpy()
                for obj_id, mask in zip(obj_ids, masks):
                    out[int(obj_id) - 1, frame_index] = mask
        return list(out)


def write_jpeg_frames(volume_rgb: np.ndarray, folder) -> None:
    """uint8 (z, y, x, 3) -> <folder>/<index>.jpg, the frame layout SAM2's video predictor reads."""
    from PIL import Image

    for index, frame in enumerate(volume_rgb):
        Image.fromarray(np.ascontiguousarray(frame)).save(os.path.join(folder, f"{index:05d}.jpg"), quality=95)


def _autocast(device: str):
    import torch

    if str(device).startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resolve_device(device: str | None) -> str:
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_checkpoint(checkpoint) -> Path:
    """The checkpoint's path; FileNotFoundError naming it (and where to get one) if it cannot be read."""
    if not checkpoint:
        raise FileNotFoundError(f"no SAM2 checkpoint given; {CHECKPOINT_HINT}")
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"SAM2 checkpoint {path} does not exist or is not a file; {CHECKPOINT_HINT}")
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as error:
        raise FileNotFoundError(f"SAM2 checkpoint {path} cannot be read ({error}); {CHECKPOINT_HINT}") from error
    return path


def config_for_checkpoint(checkpoint) -> str:
    """The SAM2 config of an official checkpoint file name (sam2[.1]_hiera_<size>.pt)."""
    match = re.match(r"(sam2(?:\.1)?)_hiera_(tiny|small|base_plus|large)", Path(checkpoint).name)
    if match is None:
        raise ValueError(f"cannot tell the SAM2 model config from the checkpoint name {Path(checkpoint).name}; pass "
                         f"the config that matches the checkpoint with --sam2-config (Sam2Settings.config), e.g. "
                         f"configs/sam2.1/sam2.1_hiera_l.yaml for sam2.1_hiera_large.pt")
    version, size = match.groups()
    return f"configs/{version}/{version}_hiera_{_CONFIG_SIZES[size]}.yaml"


def import_sam2():
    """The sam2 package; ImportError with the install command when it is missing."""
    try:
        import sam2
    except ImportError as error:
        raise ImportError(f"the SAM2 mask backend needs the sam2 package ({error}); {INSTALL_HINT}") from error
    return sam2


def check_sam2_ready(settings: Sam2Settings) -> str:
    """Everything that can fail before any work: checkpoint, config name, package. Returns the config."""
    checkpoint = check_checkpoint(settings.checkpoint)
    config = settings.config or config_for_checkpoint(checkpoint)
    import_sam2()
    return config


def load_sam2_models(settings: Sam2Settings) -> Sam2Models:
    """Build SAM2's automatic mask generator and video predictor from the user's checkpoint."""
    config = check_sam2_ready(settings)
    checkpoint = str(Path(settings.checkpoint).expanduser())
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
    from sam2.build_sam import build_sam2, build_sam2_video_predictor

    device = resolve_device(settings.device)
    try:
        image_model = build_sam2(config, checkpoint, device=device, apply_postprocessing=False)
        video_predictor = build_sam2_video_predictor(config, checkpoint, device=device)
    except Exception as error:
        raise RuntimeError(f"cannot build SAM2 from config {config} and checkpoint {checkpoint} on {device} "
                           f"({type(error).__name__}: {error}); the config must match the checkpoint (e.g. "
                           f"configs/sam2.1/sam2.1_hiera_l.yaml for sam2.1_hiera_large.pt)") from error
    generator = SAM2AutomaticMaskGenerator(image_model, points_per_side=settings.points_per_side,
                                           pred_iou_thresh=settings.pred_iou_thresh,
                                           stability_score_thresh=settings.stability_score_thresh,
                                           output_mode="binary_mask")
    return Sam2Models(generator, video_predictor, device, settings.offload_to_cpu)


_MODEL_FIELDS = ("checkpoint", "config", "device", "points_per_side", "pred_iou_thresh", "stability_score_thresh",
                 "offload_to_cpu")
_MODEL_CACHE: dict = {}


def models_for(settings: Sam2Settings):
    """The SAM2 models of `settings`, loaded once per process (one set held at a time)."""
    key = tuple(getattr(settings, name) for name in _MODEL_FIELDS)
    key = (str(Path(key[0]).expanduser().resolve()), *key[1:])
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()  # free the previous models (GPU memory) first
        _MODEL_CACHE[key] = load_sam2_models(settings)
    return _MODEL_CACHE[key]


# ---------------------------------------------------------------- command line

def add_sam2_arguments(parser: argparse.ArgumentParser) -> None:
    """--sam2-* flags for the settings a user most often changes (others: Sam2Settings in Python)."""
    group = parser.add_argument_group("SAM2 mask proposals (--backend sam2)")
    group.add_argument("--sam2-checkpoint", dest="sam2_checkpoint", default=None, metavar="PT",
                       help="SAM2 checkpoint file, downloaded from the official SAM2 release (required with "
                            "--backend sam2)")
    group.add_argument("--sam2-config", dest="sam2_config", default=None, metavar="YAML",
                       help="SAM2 model config matching the checkpoint, e.g. configs/sam2.1/sam2.1_hiera_l.yaml "
                            "[derived from the checkpoint name]")
    group.add_argument("--sam2-slice-interval-mm", dest="sam2_slice_interval_mm", type=float,
                       default=Sam2Settings.slice_interval_mm,
                       help=f"distance between seed slices in mm [{Sam2Settings.slice_interval_mm:g}]")
    group.add_argument("--sam2-device", dest="sam2_device", default=None,
                       help="torch device, e.g. cuda, cuda:1, cpu [cuda if available]")


def sam2_settings_from_args(args) -> Sam2Settings:
    """Sam2Settings from parsed arguments (flags not given keep the dataclass defaults)."""
    optional = {"config": getattr(args, "sam2_config", None), "device": getattr(args, "sam2_device", None),
                "slice_interval_mm": getattr(args, "sam2_slice_interval_mm", None)}
    return Sam2Settings(checkpoint=args.sam2_checkpoint,
                        **{name: value for name, value in optional.items() if value is not None})
