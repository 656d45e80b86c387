"""Import label maps (atlases, TotalSegmentator output, expert labels) as masks.

A label map `<case><ending>` (any ending an nnU-Net reader handles) lies on the raw image
grid of that case. It is brought onto the preprocessed grid exactly as nnU-Net brought the
case's own segmentation there: transpose_forward, the crop stored in the case's
properties (`bbox_used_for_cropping`), then the configuration's segmentation resampling
function to the stored data shape. Each non-zero value becomes one mask (all its
connected pieces together), so one map fills one uint16 layer.

Cost: when the configuration resamples (target spacing differs from the scan's),
nnU-Net's segmentation resampling interpolates every label value separately, so maps with
thousands of values take long; without resampling the import is a crop.
"""
from pathlib import Path

import numpy as np

from nnunet_mass.masks.stack import MaskStack

MAX_LABEL = int(np.iinfo(np.uint16).max)


class LabelMapError(ValueError):
    """A label map that cannot be imported for its case; the message says why."""


def label_source(labels_folder) -> str:
    """Source name of imported masks: `labels:<folder name>`."""
    return f"labels:{Path(labels_folder).resolve().name}"


def readable_endings() -> list[str]:
    from nnunetv2.imageio.reader_writer_registry import LIST_OF_IO_CLASSES

    endings = {e for rw in LIST_OF_IO_CLASSES for e in rw.supported_file_endings}
    return sorted(endings, key=len, reverse=True)


def _label_candidates(labels_folder: Path, case: str) -> list[Path]:
    endings = readable_endings()
    return sorted(p for p in labels_folder.iterdir()
                  if p.is_file() and p.name.startswith(case + ".") and p.name[len(case):].lower() in endings)


def has_label_file(labels_folder, case: str) -> bool:
    return bool(_label_candidates(Path(labels_folder), case))


def find_label_file(labels_folder, case: str, preferred_ending: str | None = None) -> Path:
    """The label map of `case` in `labels_folder`: `<case><ending>` with a readable ending."""
    labels_folder = Path(labels_folder)
    candidates = _label_candidates(labels_folder, case)
    if preferred_ending is not None:
        preferred = [p for p in candidates if p.name == case + preferred_ending]
        candidates = preferred or candidates
    if not candidates:
        raise LabelMapError(f"no label map {case}{preferred_ending or '.<ending>'} in {labels_folder} "
                            f"(readable endings: {', '.join(sorted(readable_endings()))})")
    if len(candidates) > 1:
        raise LabelMapError(f"several label maps for case {case} in {labels_folder}: "
                            f"{', '.join(p.name for p in candidates)}; keep one")
    return candidates[0]


def reader_for(path: Path, case: str, plans_manager):
    """nnU-Net's reader class for the dataset when it handles the ending, else the first that does."""
    from nnunetv2.imageio.reader_writer_registry import LIST_OF_IO_CLASSES

    ending = path.name[len(case):].lower()
    dataset_reader = plans_manager.image_reader_writer_class
    if ending in [e.lower() for e in dataset_reader.supported_file_endings]:
        return dataset_reader
    for rw in LIST_OF_IO_CLASSES:
        if ending in [e.lower() for e in rw.supported_file_endings]:
            return rw
    raise LabelMapError(f"no nnU-Net reader handles {path.name}")


def import_label_masks(case: str, labels_folder, properties: dict, data_shape, plans_manager,
                       configuration_manager, preferred_ending: str | None = None) -> MaskStack:
    """One layer: the case's label map on the preprocessed grid; one mask per non-zero value.

    `properties` is the case's nnU-Net `.pkl` content, `data_shape` its stored data shape
    (C, z, y, x).
    """
    path = find_label_file(labels_folder, case, preferred_ending)
    reader = reader_for(path, case, plans_manager)()
    try:
        seg, seg_properties = reader.read_seg(str(path))
    except Exception as error:  # readers raise anything from RuntimeError to AssertionError
        raise LabelMapError(f"cannot read label map {path}: {type(error).__name__}: {error}") from error
    check_label_values(seg, path)
    check_geometry(seg, seg_properties, properties, plans_manager.transpose_forward, path, case)
    layer = labels_to_preprocessed_grid(seg, properties, plans_manager, configuration_manager)
    if tuple(layer.shape) != tuple(data_shape[1:]):
        raise LabelMapError(f"label map {path.name} came out {list(layer.shape)} on the preprocessed grid, but "
                            f"nnU-Net's data of case {case} is {list(data_shape[1:])}: the plans changed after "
                            f"preprocessing; run nnUNetv2_preprocess again")
    return MaskStack.from_layers([layer.astype(np.uint16)], [label_source(labels_folder)])


def check_label_values(seg: np.ndarray, path: Path) -> None:
    if seg.shape[0] != 1:
        raise LabelMapError(f"label map {path.name} has {seg.shape[0]} channels; expected one")
    if not np.all(np.isfinite(seg)):
        raise LabelMapError(f"label map {path.name} contains NaN or infinite values")
    low, high = float(seg.min()), float(seg.max())
    if low < 0 or high > MAX_LABEL:
        raise LabelMapError(f"label map {path.name} has values in [{low:g}, {high:g}]; labels must lie in "
                            f"0..{MAX_LABEL}")
    if not np.array_equal(seg, np.round(seg)):
        raise LabelMapError(f"label map {path.name} has non-integer values; is it an image, not a label map?")


def check_geometry(seg: np.ndarray, seg_properties: dict, properties: dict, transpose_forward, path: Path,
                   case: str) -> None:
    """The label map must lie on the raw image's grid: size, spacing and (if known) origin/direction."""
    image_shape = list(properties["shape_before_cropping"])  # transposed order
    seg_shape = [seg.shape[1:][axis] for axis in transpose_forward]
    if seg_shape != image_shape:
        raise LabelMapError(f"label map {path.name} has size {_raw_order(seg_shape, transpose_forward)} but the "
                            f"raw image of case {case} has {_raw_order(image_shape, transpose_forward)} "
                            f"(voxels, array order z, y, x)")
    if not np.allclose(seg_properties["spacing"], properties["spacing"], rtol=1e-4, atol=1e-5):
        raise LabelMapError(f"label map {path.name} has spacing {list(map(float, seg_properties['spacing']))} but "
                            f"the raw image of case {case} has {list(map(float, properties['spacing']))}")
    seg_itk, image_itk = seg_properties.get("sitk_stuff"), properties.get("sitk_stuff")
    if seg_itk and image_itk:
        for key, atol in (("origin", 1e-3), ("direction", 1e-4)):
            if not np.allclose(seg_itk[key], image_itk[key], rtol=1e-5, atol=atol):
                raise LabelMapError(f"label map {path.name} has {key} {list(seg_itk[key])} but the raw image of "
                                    f"case {case} has {list(image_itk[key])}")


def labels_to_preprocessed_grid(seg: np.ndarray, properties: dict, plans_manager,
                                configuration_manager) -> np.ndarray:
    """int32 (z, y, x): `seg` (1, *raw axes) transposed, cropped and resampled as nnU-Net did the case."""
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

    transpose = plans_manager.transpose_forward
    seg = np.asarray(seg).astype(np.int32).transpose([0, *[axis + 1 for axis in transpose]])
    bbox = properties["bbox_used_for_cropping"]
    seg = np.ascontiguousarray(seg[(slice(None), *(slice(lo, hi) for lo, hi in bbox))])

    original_spacing = [properties["spacing"][axis] for axis in transpose]
    target_spacing = list(configuration_manager.spacing)
    if len(target_spacing) < len(original_spacing):  # 2d configurations keep the slice spacing
        target_spacing = [original_spacing[0], *target_spacing]
    new_shape = compute_new_shape(seg.shape[1:], original_spacing, target_spacing)
    seg = configuration_manager.resampling_fn_seg(seg, new_shape, original_spacing, target_spacing)
    return np.asarray(seg[0], dtype=np.int32)


def _raw_order(shape_transposed, transpose_forward) -> list[int]:
    raw = [0] * len(shape_transposed)
    for position, axis in enumerate(transpose_forward):
        raw[axis] = int(shape_transposed[position])
    return raw
