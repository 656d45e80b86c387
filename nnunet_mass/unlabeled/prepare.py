"""Write unlabeled images as an nnU-Net raw dataset whose labels are computed body masks.

`nnUNetv2_plan_and_preprocess` needs labelsTr with some foreground; a body mask (label 1)
satisfies it and gives sensible CT intensity statistics. The dataset is built in a hidden
sibling folder and renamed into place at the end, so an interrupted run leaves nothing
that nnU-Net would pick up.
"""
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnunet_mass.parallel import case_mapper
from nnunet_mass.unlabeled.body_mask import compute_body_mask
from nnunet_mass.unlabeled.inputs import CaseFiles, InvalidCase, discover_cases, read_case

FILE_ENDING = ".nii.gz"
LABELS = {"background": 0, "foreground": 1}
DESCRIPTION = ("Unlabeled images prepared by nnUNetv2_mass_prepare_unlabeled. labelsTr holds "
               "computed body masks (1 = body/foreground), not annotations.")
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")


class PreparationError(RuntimeError):
    """The dataset cannot be prepared; the message says why and what to change."""


@dataclass
class PreparationReport:
    dataset_folder: Path
    accepted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # case id (or file name) -> reason

    def summary(self) -> str:
        lines = [f"{self.dataset_folder.name}: {len(self.accepted)} case(s) accepted, "
                 f"{len(self.skipped)} skipped -> {self.dataset_folder}"]
        lines += [f"  skipped {case}: {reason}" for case, reason in sorted(self.skipped.items())]
        return "\n".join(lines)


def prepare_unlabeled_dataset(input_folder, dataset_id: int, name: str, channel_names: list[str],
                              raw_root=None, overwrite: bool = False, num_processes: int = 1,
                              min_body_ml: float = 50.0) -> PreparationReport:
    """Convert every valid case of `input_folder` into `raw_root/Dataset{id:03d}_{name}`.

    `raw_root` defaults to $nnUNet_raw. Invalid cases are skipped with a reason; a body mask
    smaller than `min_body_ml` (millilitres) counts as invalid. Raises PreparationError if
    the id is taken (unless `overwrite`) or no case is valid.
    """
    check_arguments(dataset_id, name, channel_names)
    raw_root = resolve_raw_root(raw_root)
    folder_name = f"Dataset{dataset_id:03d}_{name}"
    existing = claim_dataset_id(raw_root, dataset_id, folder_name, overwrite)
    if not Path(input_folder).is_dir():
        raise PreparationError(f"input folder {input_folder} does not exist")

    cases, skipped = discover_cases(Path(input_folder), len(channel_names))
    for case_id, reason in skipped.items():
        print(f"skipping {case_id}: {reason}")
    with staging_folder(raw_root, folder_name) as staging:
        accepted = _convert_cases(cases, channel_names, staging, num_processes, min_body_ml, skipped)
        if not accepted:
            reasons = "".join(f"\n  {case}: {reason}" for case, reason in sorted(skipped.items()))
            raise PreparationError(f"no valid case in {input_folder}" + (reasons or " (no image files found)"))
        _write_dataset_json(staging, channel_names, len(accepted), name)
        final = move_into_place(staging, raw_root / folder_name, existing)
    report = PreparationReport(final, sorted(accepted), dict(sorted(skipped.items())))
    print(report.summary())
    return report


def check_arguments(dataset_id: int, name: str, channel_names: list[str]) -> None:
    if not 1 <= int(dataset_id) <= 999:
        raise PreparationError(f"dataset id must lie in 1..999, got {dataset_id}")
    if not _NAME_PATTERN.match(name):
        raise PreparationError(f"dataset name {name!r} may only contain letters, digits, '_' and '-'")
    if not channel_names or not all(isinstance(c, str) and c.strip() for c in channel_names):
        raise PreparationError(f"give one non-empty name per channel (-cn CT or -cn T1 T2), got {channel_names}")


def resolve_raw_root(raw_root=None) -> Path:
    """`raw_root`, else $nnUNet_raw (read now, not at import); created if missing."""
    if raw_root is None:
        raw_root = os.environ.get("nnUNet_raw")
        if not raw_root:
            raise PreparationError("nnUNet_raw is not set: export nnUNet_raw=/path/to/nnUNet_raw "
                                   "(or pass raw_root=...)")
    raw_root = Path(raw_root)
    raw_root.mkdir(parents=True, exist_ok=True)
    return raw_root


def existing_dataset_folders(root: Path, dataset_id: int) -> list[Path]:
    """Folders of `root` that nnU-Net would take for dataset `dataset_id`, whatever their name."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(f"Dataset{dataset_id:03d}_"))


def claim_dataset_id(raw_root: Path, dataset_id: int, folder_name: str, overwrite: bool) -> list[Path]:
    """The raw folders of `dataset_id` that the new dataset will replace.

    Raises PreparationError if the id is taken and not `overwrite`, or if nnU-Net's other
    folders use the id under another name.
    """
    existing = existing_dataset_folders(raw_root, dataset_id)
    if existing and not overwrite:
        raise PreparationError(f"dataset id {dataset_id} already exists: {existing[0]}. "
                               f"Pass --overwrite (overwrite=True) to replace it, or choose another id.")
    _check_other_nnunet_folders(dataset_id, folder_name)
    return existing


@contextmanager
def staging_folder(raw_root: Path, folder_name: str):
    """A new hidden folder beside the final dataset, deleted if the block fails.

    The block should end by renaming it into place (`move_into_place`); on any exception,
    KeyboardInterrupt included, it is removed so no half-written dataset is left behind.
    """
    staging = Path(tempfile.mkdtemp(prefix=f".{folder_name}.partial-", dir=raw_root))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _check_other_nnunet_folders(dataset_id: int, folder_name: str) -> None:
    """nnU-Net refuses an id that maps to two names across raw/preprocessed/results; fail now, not later."""
    for variable in ("nnUNet_preprocessed", "nnUNet_results"):
        if not os.environ.get(variable):
            continue
        for other in existing_dataset_folders(Path(os.environ[variable]), dataset_id):
            if other.name != folder_name:
                raise PreparationError(f"{other} uses dataset id {dataset_id} under another name; nnU-Net "
                                       f"would then fail. Remove it or choose another id.")


def _convert_cases(cases: list[CaseFiles], channel_names: list[str], staging: Path, num_processes: int,
                   min_body_ml: float, skipped: dict[str, str]) -> list[str]:
    """Write every valid case into `staging`; returns accepted ids and adds the rejected to `skipped`."""
    (staging / "imagesTr").mkdir()
    (staging / "labelsTr").mkdir()
    tasks = [(case, channel_names, staging, min_body_ml) for case in cases]
    accepted = []
    with case_mapper(num_processes, len(tasks)) as mapper:
        for case_id, reason in tqdm(mapper(convert_case, tasks), total=len(tasks), desc="cases"):
            if reason is None:
                accepted.append(case_id)
            else:
                skipped[case_id] = reason
                tqdm.write(f"skipping {case_id}: {reason}")
    return accepted



def convert_case(task) -> tuple[str, str | None]:
    """Read, mask and write one case; (case id, None) when written, (case id, reason) when invalid.

    Only data problems are reasons; write errors (disk full, ...) propagate and abort the run.
    """
    case, channel_names, staging, min_body_ml = task
    try:
        channels = read_case(case)
        mask = compute_body_mask(channels, channel_names)
        check_body_volume(mask, min_body_ml, case.files[0].name)
    except InvalidCase as invalid:
        return case.case_id, str(invalid)
    write_case(staging, case.case_id, channels, mask)
    return case.case_id, None


def check_body_volume(mask: sitk.Image, min_body_ml: float, file_name: str) -> None:
    voxel_ml = float(np.prod(mask.GetSpacing())) / 1000.0  # mm^3 -> ml
    body_ml = np.count_nonzero(sitk.GetArrayViewFromImage(mask)) * voxel_ml
    if body_ml == 0:
        raise InvalidCase(f"{file_name}: body mask is empty")
    if body_ml < min_body_ml:
        raise InvalidCase(f"{file_name}: body mask is {body_ml:.1f} ml, below --min_body_ml {min_body_ml:g} ml")


def write_case(dataset_folder: Path, case_id: str, channels: list[sitk.Image], mask: sitk.Image) -> None:
    """Images keep their pixel type and geometry; the mask has channel 0's geometry."""
    for index, image in enumerate(channels):
        sitk.WriteImage(image, str(dataset_folder / "imagesTr" / f"{case_id}_{index:04d}{FILE_ENDING}"), True)
    sitk.WriteImage(mask, str(dataset_folder / "labelsTr" / f"{case_id}{FILE_ENDING}"), True)


def _write_dataset_json(folder: Path, channel_names: list[str], num_cases: int, name: str) -> None:
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json  # heavy import
    generate_dataset_json(str(folder), {i: c for i, c in enumerate(channel_names)}, dict(LABELS), num_cases,
                          FILE_ENDING, dataset_name=name, description=DESCRIPTION,
                          license="that of the input images", converted_by="nnUNetv2_mass_prepare_unlabeled")


def move_into_place(staging: Path, target: Path, existing: list[Path]) -> Path:
    """Rename `staging` to `target`, replacing the `existing` folders of the same id.

    The old folders are first renamed aside and only deleted once the new one is in place,
    so a failure restores them.
    """
    aside = [old.with_name(f".{old.name}.old-{staging.name.rsplit('-', 1)[-1]}") for old in existing]
    moved = []
    try:
        for old, hidden in zip(existing, aside):
            old.rename(hidden)
            moved.append((old, hidden))
        staging.rename(target)
    except BaseException:
        for old, hidden in reversed(moved):
            hidden.rename(old)
        raise
    for _, hidden in moved:
        shutil.rmtree(hidden, ignore_errors=True)
    return target
