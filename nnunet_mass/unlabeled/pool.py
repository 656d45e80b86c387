"""Pool several nnU-Net raw datasets, labeled or not, into one pretraining dataset.

MASS pretrains one network on many datasets at a common spacing. In nnU-Net terms that is
one raw dataset planned once, whose plans are then moved to each fine-tuning dataset
(`nnUNetv2_move_plans_between_datasets`). This module builds that dataset:

- every case of every source (imagesTr, optionally imagesTs) is validated and gets a body
  mask as its label, exactly as `nnUNetv2_mass_prepare_unlabeled` does, so labeled and
  unlabeled sources look alike to nnU-Net's planner;
- case ids become `<SourceDatasetName>_<case>` and dataset.json maps each to its source
  (`mass_case_sources`), which the trainer uses to up-weight small sources;
- the real labels of labeled sources are kept beside the dataset in `masksTr/`, on the
  pooled image grid, ready for `nnUNetv2_mass_generate_masks --from-labels <pool>/masksTr`.
  Test labels (labelsTs) are never used.

The dataset is built in a hidden staging folder and renamed into place at the end, with
the same guarantees as `prepare_unlabeled_dataset`.
"""
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnunet_mass.parallel import case_mapper
from nnunet_mass.raw_datasets import RawDatasetError, find_raw_dataset
from nnunet_mass.unlabeled import prepare
from nnunet_mass.unlabeled.inputs import IMAGE_EXTENSIONS, CaseFiles, discover_cases, grid_mismatch
from nnunet_mass.unlabeled.prepare import FILE_ENDING, LABELS, PreparationError

SOURCES_KEY = "mass_case_sources"
UNKNOWN_SOURCE = "unknown"
MASKS_FOLDER = "masksTr"
MAX_MASK_LABEL = int(np.iinfo(np.uint16).max)  # masks are stored as uint16 layers
DESCRIPTION = ("Pretraining pool made by nnUNetv2_mass_pool_datasets. labelsTr holds computed body masks "
               "(1 = body/foreground), not annotations; masksTr holds the labels of labeled sources for "
               "nnUNetv2_mass_generate_masks --from-labels. mass_case_sources maps each case to its source.")


@dataclass(frozen=True)
class SourceDataset:
    """One nnU-Net raw dataset to pool, as its dataset.json describes it."""
    name: str
    folder: Path
    channel_names: tuple[str, ...]
    file_ending: str
    ignore_label: int | None
    dataset_json: dict


@dataclass(frozen=True)
class PoolCase:
    """One case to pool (picklable: it travels to worker processes)."""
    case_id: str                      # pooled id, <source>_<case>
    source: str
    files: tuple[Path, ...]           # index = channel
    channel_names: tuple[str, ...]    # the source's names: they say what the intensities are
    label: Path | None = None         # the source's label map, for masksTr
    ignore_label: int | None = None


@dataclass
class PoolReport:
    dataset_folder: Path
    sources: dict[str, str] = field(default_factory=dict)      # accepted case id -> source name
    skipped: dict[str, str] = field(default_factory=dict)      # case id (or file name) -> reason
    masks: list[str] = field(default_factory=list)             # cases with a file in masksTr
    label_notes: dict[str, str] = field(default_factory=dict)  # case id -> why its label was not kept

    def summary(self) -> str:
        lines = [f"{self.dataset_folder.name}: {len(self.sources)} case(s) pooled, {len(self.skipped)} skipped, "
                 f"{len(self.masks)} with labels in {MASKS_FOLDER}/ -> {self.dataset_folder}"]
        for source in sorted(set(self.sources.values())):
            cases = [c for c, s in self.sources.items() if s == source]
            labeled = sum(c in self.masks for c in cases)
            lines.append(f"  {source}: {len(cases)} case(s), {labeled} with labels")
        lines += [f"  skipped {case}: {reason}" for case, reason in sorted(self.skipped.items())]
        lines += [f"  label not kept for {case}: {note}" for case, note in sorted(self.label_notes.items())]
        return "\n".join(lines)


def pool_datasets(sources, dataset_id: int, name: str, channel_names: list[str] | None = None,
                  include_test: bool = False, raw_root=None, overwrite: bool = False, num_processes: int = 1,
                  min_body_ml: float = 50.0) -> PoolReport:
    """Pool the raw datasets `sources` (ids or names) into `raw_root/Dataset{id:03d}_{name}`.

    `channel_names` replaces the sources' channel names in the pooled dataset.json (needed
    when they differ); nnU-Net then normalises by the new names. `raw_root` defaults to
    $nnUNet_raw. Invalid cases are skipped with a reason. Raises PreparationError when a
    source cannot be read, channels disagree, the id is taken (unless `overwrite`), or a
    source ends up with no valid case.
    """
    raw_root = prepare.resolve_raw_root(raw_root)
    datasets = [load_source(raw_root, source) for source in sources]
    check_sources(datasets, dataset_id)
    pooled_names = pooled_channel_names(datasets, channel_names)
    prepare.check_arguments(dataset_id, name, pooled_names)
    folder_name = f"Dataset{dataset_id:03d}_{name}"
    existing = prepare.claim_dataset_id(raw_root, dataset_id, folder_name, overwrite)

    cases, skipped = collect_cases(datasets, include_test)
    for case_id, reason in skipped.items():
        print(f"skipping {case_id}: {reason}")
    report = PoolReport(raw_root / folder_name, skipped=skipped)
    with prepare.staging_folder(raw_root, folder_name) as staging:
        _convert_cases(cases, staging, num_processes, min_body_ml, report)
        _check_every_source_contributes(datasets, report)
        write_dataset_json(staging, pooled_names, report.sources, name)
        report.dataset_folder = prepare.move_into_place(staging, raw_root / folder_name, existing)
    print(report.summary())
    return report


def load_source(raw_root: Path, dataset_name_or_id) -> SourceDataset:
    """The raw dataset `dataset_name_or_id` (an id like 11 or a name like Dataset011_X) of `raw_root`."""
    try:
        raw = find_raw_dataset(dataset_name_or_id, raw_root)
    except RawDatasetError as error:
        raise PreparationError(f"source {dataset_name_or_id}: {error}") from None
    dataset_name, folder, content, json_file = raw.name, raw.folder, raw.dataset_json, raw.folder / "dataset.json"
    try:
        names = content.get("channel_names", content.get("modality"))
        channel_names = tuple(str(names[key]) for key in sorted(names, key=int))
        file_ending = content["file_ending"]
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise PreparationError(f"source {dataset_name}: {json_file} is not a valid nnU-Net dataset.json "
                               f"({type(error).__name__}: {error})") from None
    if file_ending.lower() not in IMAGE_EXTENSIONS:
        raise PreparationError(f"source {dataset_name} uses file_ending {file_ending}: only 3D images "
                               f"({', '.join(IMAGE_EXTENSIONS)}) can be pooled")
    ignore = content.get("labels", {}).get("ignore")
    return SourceDataset(dataset_name, folder, channel_names, file_ending,
                         None if ignore is None else int(ignore), content)


def check_sources(datasets: list[SourceDataset], dataset_id: int) -> None:
    """No source twice, and the pool must not replace one of its own sources."""
    if not datasets:
        raise PreparationError("give at least one source dataset (-d 11 12 ...)")
    names = [d.name for d in datasets]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise PreparationError(f"source dataset(s) given more than once: {', '.join(repeated)}")
    prefix = f"Dataset{int(dataset_id):03d}_"
    clash = [n for n in names if n.startswith(prefix)]
    if clash:
        raise PreparationError(f"the pooled dataset id {dataset_id} is that of source {clash[0]}; choose another -o")


def pooled_channel_names(datasets: list[SourceDataset], given: list[str] | None) -> list[str]:
    """The pooled dataset's channel names: the sources' common ones, or `given` (with a warning
    for every source whose names it changes, since nnU-Net normalises by name)."""
    counts = {len(d.channel_names) for d in datasets}
    if given is None:
        variants = {d.channel_names for d in datasets}
        if len(variants) > 1:
            listing = "".join(f"\n  {d.name}: {list(d.channel_names)}" for d in datasets)
            raise PreparationError("the sources' channel names differ:" + listing + "\nPool them only if the "
                                   "channels correspond, and then give the pooled names with -cn (see -h)")
        return list(datasets[0].channel_names)
    given = list(given)
    if counts != {len(given)}:
        listing = ", ".join(f"{d.name} has {len(d.channel_names)}" for d in datasets)
        raise PreparationError(f"-cn gives {len(given)} channel name(s), but {listing}")
    changed = [d for d in datasets if list(d.channel_names) != given]
    if changed:
        warnings.warn(_renaming_warning(changed, given), UserWarning, stacklevel=3)
    return given


def _renaming_warning(changed: list[SourceDataset], given: list[str]) -> str:
    from nnunetv2.preprocessing.normalization.map_channel_name_to_normalization import get_normalization_scheme

    renamed = "; ".join(f"{d.name} {list(d.channel_names)}" for d in changed)
    schemes = ", ".join(f"'{n}' -> {get_normalization_scheme(n).__name__}" for n in given)
    return (f"pooled channel names {given} replace those of {renamed}. nnU-Net normalises by name: {schemes}. "
            f"CTNormalization clips to the pool's foreground percentiles and uses its global mean/std (right only "
            f"if every source is CT in HU); any other name means per-scan z-score, so absolute HU values are "
            f"lost. Body masks still use each source's own names.")


def collect_cases(datasets: list[SourceDataset], include_test: bool) -> tuple[list[PoolCase], dict[str, str]]:
    """Every complete case of the sources (imagesTr, and imagesTs if `include_test`), with its label
    map where the source has one in labelsTr; plus {pooled case id or file: reason} for the rest."""
    cases, skipped = [], {}
    for dataset in datasets:
        folders = ["imagesTr"] + (["imagesTs"] if include_test else [])
        found = []
        for folder in folders:
            listed, problems = _list_folder(dataset, folder)
            found += listed
            skipped.update({f"{dataset.name}_{key}": reason for key, reason in problems.items()})
        if not found:
            raise PreparationError(f"source {dataset.name} has no images ending in {dataset.file_ending} in "
                                   f"{' or '.join(folders)}")
        cases += found
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):  # imagesTr and imagesTs may share a case name
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        raise PreparationError(f"case ids occur twice (in imagesTr and imagesTs?): {', '.join(repeated[:5])}")
    return cases, skipped


def _list_folder(dataset: SourceDataset, folder: str) -> tuple[list[PoolCase], dict[str, str]]:
    """Cases of one images folder; labels are looked up only for imagesTr."""
    if folder == "imagesTr" and "dataset" in dataset.dataset_json:
        return _listed_in_dataset_json(dataset), {}
    path = dataset.folder / folder
    if not path.is_dir():
        return [], {}
    found, problems = discover_cases(path, len(dataset.channel_names))
    # nnU-Net only sees files with the dataset's file ending; neither do we.
    found = [c for c in found if all(f.name.endswith(dataset.file_ending) for f in c.files)]
    cases = []
    for case in found:
        label = dataset.folder / "labelsTr" / f"{case.case_id}{dataset.file_ending}"
        has_label = folder == "imagesTr" and label.is_file()
        cases.append(PoolCase(f"{dataset.name}_{case.case_id}", dataset.name, case.files, dataset.channel_names,
                              label if has_label else None, dataset.ignore_label))
    return cases, problems


def _listed_in_dataset_json(dataset: SourceDataset) -> list[PoolCase]:
    """Cases of a dataset.json with an explicit "dataset" section (paths relative to the dataset)."""
    cases = []
    for key, entry in sorted(dataset.dataset_json["dataset"].items()):
        files = tuple(_resolve(dataset.folder, image) for image in entry["images"])
        label = _resolve(dataset.folder, entry["label"]) if entry.get("label") else None
        cases.append(PoolCase(f"{dataset.name}_{key}", dataset.name, files, dataset.channel_names,
                              label if label is not None and label.is_file() else None, dataset.ignore_label))
    return cases


def _resolve(folder: Path, path: str) -> Path:
    """A dataset.json path as nnU-Net reads it: variables expanded, relative to the dataset folder."""
    path = Path(os.path.expandvars(path))
    return path if path.is_absolute() else folder / path


def _convert_cases(cases: list[PoolCase], staging: Path, num_processes: int, min_body_ml: float,
                   report: PoolReport) -> None:
    """Write every valid case into `staging`, recording the outcome in `report`."""
    for sub in ("imagesTr", "labelsTr", MASKS_FOLDER):
        (staging / sub).mkdir()
    source_of = {case.case_id: case.source for case in cases}
    tasks = [(case, staging, min_body_ml) for case in cases]
    with case_mapper(num_processes, len(tasks)) as mapper:
        for case_id, reason, label_outcome in tqdm(mapper(convert_pool_case, tasks), total=len(tasks),
                                                   desc="cases"):
            if reason is not None:
                report.skipped[case_id] = reason
                tqdm.write(f"skipping {case_id}: {reason}")
                continue
            report.sources[case_id] = source_of[case_id]
            if label_outcome == "written":
                report.masks.append(case_id)
            elif label_outcome is not None:
                report.label_notes[case_id] = label_outcome
                tqdm.write(f"label of {case_id} not kept: {label_outcome}")
    report.sources = dict(sorted(report.sources.items()))
    report.masks.sort()


def convert_pool_case(task) -> tuple[str, str | None, str | None]:
    """Convert one case as prepare_unlabeled does, then keep its label map in masksTr.

    Returns (case id, reason it was skipped or None, label outcome): the outcome is None
    without a label, "written", or why the label was not kept (the image still is).
    """
    case, staging, min_body_ml = task
    case_id, reason = prepare.convert_case((CaseFiles(case.case_id, case.files), list(case.channel_names),
                                            staging, min_body_ml))
    if reason is not None or case.label is None:
        return case_id, reason, None
    image_file = staging / "imagesTr" / f"{case_id}_0000{FILE_ENDING}"
    target = staging / MASKS_FOLDER / f"{case_id}{FILE_ENDING}"
    problem = write_label_mask(case.label, image_file, target, case.ignore_label)
    return case_id, None, problem or "written"


def write_label_mask(label_file: Path, image_file: Path, target: Path, ignore_label: int | None) -> str | None:
    """Write `label_file` as a uint16 map on exactly the grid of `image_file`; why not, or None.

    `nnUNetv2_mass_generate_masks --from-labels` wants each map on its case's raw image
    grid, integer values in 0..65535; the ignore label marks unannotated voxels, not a
    structure, so it becomes background.
    """
    try:
        label = sitk.ReadImage(str(label_file))
    except RuntimeError as error:
        return f"{label_file.name} unreadable ({str(error).strip().splitlines()[-1]})"
    grid = sitk.ImageFileReader()
    grid.SetFileName(str(image_file))
    grid.ReadImageInformation()  # header only: the grid the pooled image was written with
    problem = _label_problem(label, grid)
    if problem:
        return f"{label_file.name}: {problem}"
    values = sitk.GetArrayFromImage(label)
    problem = _label_value_problem(values)
    if problem:
        return f"{label_file.name}: {problem}"
    values = values.astype(np.uint16)
    if ignore_label is not None:
        values[values == ignore_label] = 0
    mask = sitk.GetImageFromArray(values)
    for setter, getter in ((mask.SetSpacing, grid.GetSpacing), (mask.SetOrigin, grid.GetOrigin),
                           (mask.SetDirection, grid.GetDirection)):
        setter(getter())  # exact image geometry, without the label's float noise
    sitk.WriteImage(mask, str(target), True)
    return None


def _label_problem(label: sitk.Image, grid) -> str | None:
    if label.GetDimension() != 3 or label.GetNumberOfComponentsPerPixel() != 1:
        return "not a 3D single-channel label map"
    mismatch = grid_mismatch(grid, label)  # the reader has the same geometry getters as an image
    return None if mismatch is None else f"grid differs from the image: {mismatch}"


def _label_value_problem(values: np.ndarray) -> str | None:
    if not np.all(np.isfinite(values)):
        return "contains NaN or infinite values"
    if values.size and (values.min() < 0 or values.max() > MAX_MASK_LABEL):
        return f"values outside 0..{MAX_MASK_LABEL}"
    if not np.array_equal(values, np.round(values)):
        return "non-integer values"
    return None


def _check_every_source_contributes(datasets: list[SourceDataset], report: PoolReport) -> None:
    """A source that lost every case is an error, not a silently smaller pool."""
    contributing = set(report.sources.values())
    empty = [d.name for d in datasets if d.name not in contributing]
    if empty:
        reasons = "".join(f"\n  {case}: {reason}" for case, reason in sorted(report.skipped.items())
                          if any(case.startswith(name + "_") for name in empty))
        raise PreparationError(f"no valid case in source(s) {', '.join(empty)}" + reasons)


def write_dataset_json(folder: Path, channel_names: list[str], sources: dict[str, str], name: str) -> None:
    """nnU-Net's standard keys plus `mass_case_sources` {case id: source dataset name}."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json  # heavy import

    generate_dataset_json(str(folder), {i: c for i, c in enumerate(channel_names)}, dict(LABELS), len(sources),
                          FILE_ENDING, dataset_name=name, description=DESCRIPTION,
                          license="those of the source datasets", converted_by="nnUNetv2_mass_pool_datasets",
                          **{SOURCES_KEY: dict(sources)})


def source_balanced_probabilities(dataset_json: dict, case_ids: list[str], exponent: float = 0.5) -> np.ndarray | None:
    """Sampling probability per case of `case_ids` that gives each source a total weight
    proportional to n**exponent, n being its number of cases among `case_ids`.

    exponent 1 is plain uniform sampling over cases, 0 makes every source equally likely;
    in between, small sources are up-weighted (MASS draws scans with per-dataset weights).
    Cases missing from `mass_case_sources` form one source "unknown". None (sample
    uniformly) without the mapping or with a single source.
    """
    mapping = dataset_json.get(SOURCES_KEY)
    if not mapping or len(case_ids) == 0:
        return None
    sources = [mapping.get(case, UNKNOWN_SOURCE) for case in case_ids]
    _, source_index, counts = np.unique(sources, return_inverse=True, return_counts=True)
    if len(counts) < 2:
        return None
    per_case = counts.astype(float) ** exponent / counts  # a source's weight, shared by its cases
    weights = per_case[source_index]
    return weights / weights.sum()
