"""Write phantoms as an nnU-Net v2 raw dataset (imagesTr, labelsTr, dataset.json).

Geometry: SimpleITK orders everything (x, y, z) while our arrays are (z, y, x), so spacing
is reversed on the way out. The direction is diag(-1, -1, 1) (array axes point right,
anterior, superior in LPS) and the origin puts the volume centre at world (0, 0, 0), so
neither is trivial and downstream geometry checks have something to check.
Images are float32 in both modalities (HU for CT), labels uint8.
"""
import json
import re
import shutil
from pathlib import Path

import numpy as np

from nnunet_mass.phantoms.anatomy import PHANTOM_LABELS
from nnunet_mass.phantoms.phantom import check_phantom_args, make_phantom

DIRECTION_XYZ = np.diag([-1.0, -1.0, 1.0])
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def case_rng(seed: int, case_index: int) -> np.random.Generator:
    """Generator of one case: depends only on (seed, case_index), not on how many cases are written."""
    return np.random.default_rng([seed, case_index])


def phantom_geometry(shape, spacing) -> dict:
    """SimpleITK geometry, all (x, y, z), for an array of `shape` and `spacing` given (z, y, x)."""
    spacing_xyz = np.asarray(spacing, dtype=float)[::-1]
    half_extent = (np.asarray(shape, dtype=float)[::-1] - 1) / 2 * spacing_xyz
    origin = -DIRECTION_XYZ @ half_extent  # world position of voxel (0, 0, 0)
    return {"spacing": tuple(spacing_xyz), "origin": tuple(origin), "direction": tuple(DIRECTION_XYZ.ravel())}


def write_image(array: np.ndarray, path: Path, spacing) -> None:
    """Save a (z, y, x) array with the phantom geometry; spacing is (z, y, x) mm."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)  # array (z, y, x) -> image size (x, y, z)
    geometry = phantom_geometry(array.shape, spacing)
    image.SetSpacing(geometry["spacing"])
    image.SetOrigin(geometry["origin"])
    image.SetDirection(geometry["direction"])
    sitk.WriteImage(image, str(path), useCompression=True)


def dataset_json(name: str, modality: str, num_cases: int, labeled: bool, provenance: dict) -> dict:
    return {
        "name": name,
        "description": "nnunet-mass synthetic phantoms" + ("" if labeled else
                       " (unlabeled pool: no labelsTr, for self-supervised pretraining only)"),
        "channel_names": {"0": modality},
        "labels": dict(PHANTOM_LABELS) if labeled else {"background": 0},
        "numTraining": num_cases,
        "file_ending": ".nii.gz",
        "phantom_generator": provenance,
    }


def _check_dataset_args(dataset_id, name, num_cases, seed, case_prefix) -> None:
    if not isinstance(dataset_id, (int, np.integer)) or not 1 <= dataset_id <= 999:
        raise ValueError(f"dataset_id must be an integer in [1, 999], got {dataset_id!r}")
    for what, value in (("name", name), ("case_prefix", case_prefix)):
        if not isinstance(value, str) or not _NAME.fullmatch(value):
            raise ValueError(f"{what} must be letters, digits, '_' or '-' (starting with a letter or digit), "
                             f"got {value!r}")
    if not isinstance(num_cases, (int, np.integer)) or num_cases < 1:
        raise ValueError(f"num_cases must be an integer >= 1, got {num_cases!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")


def _clear_dataset_id(raw_root: Path, dataset_id: int, overwrite: bool) -> None:
    """nnU-Net resolves a dataset by its id alone, so any folder with the same id is in the way."""
    existing = sorted(p for p in raw_root.glob(f"Dataset{dataset_id:03d}_*") if p.is_dir())
    if existing and not overwrite:
        raise ValueError(f"{raw_root} already holds dataset id {dataset_id} ({', '.join(p.name for p in existing)}); "
                         "choose another id or pass overwrite=True (--overwrite) to replace it")
    for folder in existing:
        shutil.rmtree(folder)


def write_phantom_dataset(raw_root, dataset_id: int, name: str, num_cases: int, seed: int = 0,
                          modality: str = "CT", labeled: bool = True, shape=(64, 64, 64),
                          spacing=(2.5, 2.0, 2.0), case_prefix: str = "phantom", overwrite: bool = False) -> Path:
    """Create raw_root/Dataset{id:03d}_{name} with imagesTr/{case}_0000.nii.gz, labelsTr/{case}.nii.gz
    and dataset.json; returns that folder. Case i is `make_phantom(case_rng(seed, i), ...)`.

    labeled=False writes an unlabeled pool: no labelsTr and labels {"background": 0} only.
    Such a folder is input for pretraining, not for nnU-Net's supervised planning/training.
    An existing folder with the same id (any name) is an error unless overwrite=True.
    """
    modality, shape, spacing = check_phantom_args(modality, shape, spacing)
    _check_dataset_args(dataset_id, name, num_cases, seed, case_prefix)
    raw_root = Path(raw_root)
    raw_root.mkdir(parents=True, exist_ok=True)
    _clear_dataset_id(raw_root, dataset_id, overwrite)

    folder = raw_root / f"Dataset{dataset_id:03d}_{name}"
    (folder / "imagesTr").mkdir(parents=True)
    if labeled:
        (folder / "labelsTr").mkdir()
    for i in range(num_cases):
        image, labels = make_phantom(case_rng(seed, i), modality, shape, spacing)
        case = f"{case_prefix}_{i:03d}"
        write_image(image, folder / "imagesTr" / f"{case}_0000.nii.gz", spacing)
        if labeled:
            write_image(labels, folder / "labelsTr" / f"{case}.nii.gz", spacing)
    provenance = {"seed": seed, "shape_zyx": list(shape), "spacing_zyx": list(spacing), "case_prefix": case_prefix}
    content = dataset_json(name, modality, num_cases, labeled, provenance)
    (folder / "dataset.json").write_text(json.dumps(content, indent=2))
    return folder
