"""Find the cases of an input folder and read them, rejecting what nnU-Net could not use.

Files follow nnU-Net's naming, `<case>_<XXXX>.<ext>` with a 4-digit channel index. With a
single channel, a file without that suffix is a case of its own. Every problem with one
case raises `InvalidCase` with a one-line reason, so the caller can skip that case and go on.
"""
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

# Longest first, so "x.nii.gz" is not taken for ".gz".
IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_ITK_OBJECT_PREFIX = re.compile(r"^\s*\w+\(0x[0-9a-fA-F]+\):\s*")

# Channels count as one grid when they differ by less than this (float noise of converters).
# nnU-Net itself compares channels with np.allclose, so we then give all channels the
# geometry of channel 0 exactly.
SPACING_RTOL = 1e-4
ORIGIN_TOL_VOXELS = 0.01  # origin shift, in units of the smallest spacing
DIRECTION_ATOL = 1e-4
# NIfTI stores only orthonormal directions (ITK coerces others on writing), so a sheared
# grid would not survive the conversion.
ORTHONORMAL_ATOL = 1e-3


class InvalidCase(Exception):
    """A case that cannot be used; the message is the one-line reason."""


@dataclass(frozen=True)
class CaseFiles:
    case_id: str
    files: tuple[Path, ...]  # index = channel


def split_image_name(file_name: str) -> tuple[str, str] | None:
    """(stem, extension) of a supported image file name, None for anything else."""
    for ext in IMAGE_EXTENSIONS:
        if file_name.lower().endswith(ext) and len(file_name) > len(ext):
            return file_name[:-len(ext)], ext
    return None


def discover_cases(folder: Path, num_channels: int) -> tuple[list[CaseFiles], dict[str, str]]:
    """Group the image files of `folder` (not recursive) into complete cases.

    Returns the complete cases sorted by id, and {case id or file name: reason} for the rest.
    """
    grouped: dict[str, dict[int, list[Path]]] = {}
    skipped: dict[str, str] = {}
    for path in sorted(Path(folder).iterdir()):
        parts = split_image_name(path.name)
        if path.name.startswith(".") or not path.is_file() or parts is None:
            continue  # hidden files, folders, .raw/.zraw data files of .mhd/.nhdr headers
        match = _CHANNEL_SUFFIX.match(parts[0])
        if match:
            case_id, channel = match["case"], int(match["channel"])
        elif num_channels == 1:
            case_id, channel = parts[0], 0
        else:
            skipped[path.name] = (f"no _XXXX channel suffix in the file name "
                                  f"(needed with {num_channels} channel names)")
            continue
        grouped.setdefault(case_id, {}).setdefault(channel, []).append(path)

    cases = []
    for case_id, channels in sorted(grouped.items()):
        problem = _channel_problem(channels, num_channels)
        if problem:
            skipped[case_id] = problem
        else:
            cases.append(CaseFiles(case_id, tuple(channels[c][0] for c in range(num_channels))))
    return cases, skipped


def _channel_problem(channels: dict[int, list[Path]], num_channels: int) -> str | None:
    duplicates = [paths for paths in channels.values() if len(paths) > 1]
    if duplicates:
        return "several files for one channel: " + ", ".join(p.name for p in duplicates[0])
    expected = set(range(num_channels))
    missing = sorted(expected - channels.keys())
    extra = sorted(channels.keys() - expected)
    if not missing and not extra:
        return None
    reasons = []
    if missing:
        reasons.append("missing channel(s) " + ", ".join(f"{c:04d}" for c in missing))
    if extra:
        reasons.append("unexpected channel(s) " + ", ".join(f"{c:04d}" for c in extra))
    return "; ".join(reasons) + f" (expected _0000.._{num_channels - 1:04d}, one per channel name given with -cn)"


def read_case(case: CaseFiles) -> list[sitk.Image]:
    """The validated channels of `case`, all on exactly the grid of channel 0."""
    images = [read_image(path) for path in case.files]
    reference = images[0]
    for path, image in zip(case.files[1:], images[1:]):
        mismatch = grid_mismatch(reference, image)
        if mismatch:
            raise InvalidCase(f"{path.name}: grid differs from {case.files[0].name}: {mismatch}")
        image.CopyInformation(reference)  # remove float noise; nnU-Net wants identical grids
    return images


def read_image(path: Path) -> sitk.Image:
    """Read one channel file and check that it is a usable 3D scalar image."""
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InvalidCase(f"{path.name}: unreadable ({_short_itk_error(error)})") from None
    problem = (_shape_problem(image)
               or geometry_problem(image.GetSpacing(), image.GetDirection())
               or _intensity_problem(image))
    if problem:
        raise InvalidCase(f"{path.name}: {problem}")
    return image


def _shape_problem(image: sitk.Image) -> str | None:
    if image.GetDimension() != 3:
        return f"not 3D ({image.GetDimension()}D image)"
    if image.GetNumberOfComponentsPerPixel() != 1:
        return (f"{image.GetNumberOfComponentsPerPixel()} components per voxel; "
                f"give each channel as its own file")
    if image.GetNumberOfPixels() == 0:
        return "empty (no voxels)"
    return None


def geometry_problem(spacing, direction) -> str | None:
    """Why a 3D grid with this spacing (mm) and direction (row-major 3x3) is unusable, or None."""
    spacing = np.asarray(spacing, dtype=float)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        return f"spacing {tuple(spacing.tolist())} is not positive and finite"
    matrix = np.asarray(direction, dtype=float).reshape(3, 3)
    if not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix)) < 1e-6:
        return "degenerate direction matrix (not invertible)"
    if not np.allclose(matrix.T @ matrix, np.eye(3), atol=ORTHONORMAL_ATOL):
        return "direction matrix is not orthonormal (sheared grid; NIfTI cannot store it)"
    return None


def _intensity_problem(image: sitk.Image) -> str | None:
    voxels = sitk.GetArrayViewFromImage(image)
    # min/max propagate NaN and expose inf without allocating a mask of the whole volume.
    low, high = voxels.min(), voxels.max()
    if np.isnan(low) or np.isnan(high):
        return "contains NaN voxels"
    if not (np.isfinite(low) and np.isfinite(high)):
        return "contains infinite voxels"
    if low == high:
        return f"constant image (every voxel is {low})"
    return None


def grid_mismatch(reference: sitk.Image, image: sitk.Image) -> str | None:
    """Which of size/spacing/origin/direction differs between two images, or None."""
    if reference.GetSize() != image.GetSize():
        return f"size {image.GetSize()} vs {reference.GetSize()}"
    spacing = np.array(reference.GetSpacing())
    if not np.allclose(image.GetSpacing(), spacing, rtol=SPACING_RTOL, atol=0):
        return f"spacing {image.GetSpacing()} vs {reference.GetSpacing()}"
    if not np.allclose(image.GetOrigin(), reference.GetOrigin(), rtol=0,
                       atol=ORIGIN_TOL_VOXELS * spacing.min()):
        return f"origin {image.GetOrigin()} vs {reference.GetOrigin()}"
    if not np.allclose(image.GetDirection(), reference.GetDirection(), rtol=0, atol=DIRECTION_ATOL):
        return "direction"
    return None


def _short_itk_error(error: Exception) -> str:
    """The first line of ITK's own message, without source location and object address."""
    text = str(error)
    if "ERROR:" in text:  # "sitk::ERROR: ..." or "ITK ERROR: Image(0x...): ..."
        text = _ITK_OBJECT_PREFIX.sub("", text.split("ERROR:", 1)[1])
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
