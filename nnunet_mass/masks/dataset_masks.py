"""Mask proposals for every case of an nnU-Net-preprocessed dataset.

For one configuration of one plans file: read each case's preprocessed image (cropped,
resampled and normalised by nnU-Net), run a mask generator on it and/or import the case's
label map, and save the MaskStack beside nnU-Net's data (see store.py). Finished cases are
skipped unless `overwrite`, so an interrupted run resumes where it stopped. A case that
fails is reported with its reason while the others complete.

A generator is any picklable callable
    generator(image: float32 (C, z, y, x), spacing_zyx: tuple of mm, settings) -> MaskStack
with the masks on the image's grid; the default is `nnunet_mass.masks.classical.propose_masks`.
"""
import importlib
import os
import pickle
import time
import traceback
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from nnunet_mass.parallel import case_mapper
from nnunet_mass.masks.from_labels import LabelMapError, has_label_file, import_label_masks
from nnunet_mass.masks.stack import MaskStack
from nnunet_mass.masks.store import MaskFormatError, is_finished, mask_folder, save_mask_stack

DEFAULT_GENERATOR = "nnunet_mass.masks.classical.propose_masks"


class MaskGenerationError(RuntimeError):
    """The run cannot start (dataset, plans or configuration missing, bad arguments)."""


class CaseInputError(ValueError):
    """One case's data cannot be used; the message says what is wrong with it."""


_EXPECTED_ERRORS = (CaseInputError, LabelMapError, MaskFormatError)


@dataclass
class MaskGenerationReport:
    mask_folder: Path
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)       # already finished, not regenerated
    failed: dict[str, str] = field(default_factory=dict)   # case -> reason
    num_masks: dict[str, int] = field(default_factory=dict)  # case -> masks written this run

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        lines = [f"{len(self.done)} case(s) done, {len(self.skipped)} skipped as already finished, "
                 f"{len(self.failed)} failed -> {self.mask_folder}"]
        if self.done:
            counts = [self.num_masks[c] for c in self.done if c in self.num_masks]
            if counts:
                lines.append(f"  masks per case: min {min(counts)}, median {int(np.median(counts))}, "
                             f"max {max(counts)}")
        lines += [f"  FAILED {case}: {reason}" for case, reason in sorted(self.failed.items())]
        return "\n".join(lines)


@dataclass(frozen=True)
class CaseJob:
    """Everything a worker needs for any case of the run (picklable)."""
    data_folder: str
    mask_folder: str
    plans_file: str
    configuration: str
    generator: Callable | None
    settings: object
    labels_folder: str | None
    label_ending: str | None
    metadata: dict


@dataclass(frozen=True)
class CaseResult:
    case: str
    num_masks: int = 0
    error: str | None = None
    details: str | None = None  # traceback of unexpected errors
    seconds: float = 0.0


def generate_dataset_masks(dataset_name_or_id, configuration: str = "3d_fullres",
                           plans_identifier: str = "nnUNetPlans", num_processes: int = 1, overwrite: bool = False,
                           generator: Callable | None = None, settings=None, from_labels: str | None = None,
                           mix_generated: bool = True) -> MaskGenerationReport:
    """Make and store the masks of every case; returns (and prints) what was done, skipped, failed.

    `from_labels` imports `<case><ending>` label maps from that folder first (one layer per
    map); with `mix_generated` the generator's masks follow them, otherwise only the
    imported masks are stored. Raises MaskGenerationError when the run cannot start.
    """
    if int(num_processes) < 1:
        raise MaskGenerationError(f"num_processes must be >= 1, got {num_processes}")
    if not mix_generated and from_labels is None:
        raise MaskGenerationError("labels only (--labels-only / mix_generated=False) needs a label folder "
                                  "(--from-labels DIR)")
    if from_labels is not None and not Path(from_labels).is_dir():
        raise MaskGenerationError(f"label folder {from_labels} does not exist")
    layout = resolve_layout(dataset_name_or_id, configuration, plans_identifier)
    if mix_generated:
        generator, settings = resolve_generator(generator, settings)
    else:
        generator, settings = None, None

    out_folder = mask_folder(layout["dataset_folder"], layout["data_identifier"])
    job = CaseJob(str(layout["data_folder"]), str(out_folder), str(layout["plans_file"]), configuration,
                  generator, settings, None if from_labels is None else str(Path(from_labels).resolve()),
                  layout["file_ending"], run_metadata(layout, configuration, plans_identifier, generator, settings,
                                                      from_labels))
    report = MaskGenerationReport(out_folder)
    todo = []
    for case in layout["cases"]:
        if not overwrite and _finished_and_current(out_folder, layout["data_folder"], case):
            report.skipped.append(case)
        else:
            todo.append(case)
    if generator is not None:
        _check_picklable(generator, settings, num_processes)

    for result in _run_cases(todo, job, num_processes):
        if result.error is None:
            report.done.append(result.case)
            report.num_masks[result.case] = result.num_masks
        else:
            report.failed[result.case] = result.error
            tqdm.write(f"FAILED {result.case}: {result.error}" + (f"\n{result.details}" if result.details else ""))
    report.done.sort()
    print(report.summary())
    return report


def resolve_layout(dataset_name_or_id, configuration: str, plans_identifier: str) -> dict:
    """Folders, plans file, data identifier and case ids; errors name the nnU-Net command to run."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    if not os.environ.get("nnUNet_preprocessed"):
        raise MaskGenerationError("nnUNet_preprocessed is not set: export nnUNet_preprocessed=/path/to/"
                                  "nnUNet_preprocessed (the folder nnUNetv2_plan_and_preprocess wrote to)")
    fix = (f"run `nnUNetv2_plan_and_preprocess -d {dataset_name_or_id} -c {configuration}` first (for plans other "
           f"than nnUNetPlans: `nnUNetv2_preprocess -d {dataset_name_or_id} -plans_name {plans_identifier} "
           f"-c {configuration}`)")
    try:
        name = maybe_convert_to_dataset_name(dataset_name_or_id)
    except (RuntimeError, ValueError) as error:
        raise MaskGenerationError(f"no dataset {dataset_name_or_id} found ({error}); {fix}") from error
    dataset_folder = Path(os.environ["nnUNet_preprocessed"]) / name
    if not dataset_folder.is_dir():
        raise MaskGenerationError(f"{dataset_folder} does not exist: dataset {name} is not preprocessed; {fix}")
    plans_file = dataset_folder / f"{plans_identifier}.json"
    if not plans_file.is_file():
        found = sorted(p.stem for p in dataset_folder.glob("*.json")
                       if p.stem not in ("dataset", "dataset_fingerprint"))
        raise MaskGenerationError(f"no plans {plans_file.name} in {dataset_folder} (found: {found or 'none'}); {fix}")
    plans_manager = _plans_manager(str(plans_file))
    if configuration not in plans_manager.available_configurations:
        raise MaskGenerationError(f"configuration '{configuration}' is not in {plans_file.name} (available: "
                                  f"{plans_manager.available_configurations}); choose one with -c")
    data_identifier = plans_manager.get_configuration(configuration).data_identifier
    data_folder = dataset_folder / data_identifier
    cases = list_cases(data_folder)
    if not cases:
        raise MaskGenerationError(f"{data_folder} holds no preprocessed cases: configuration '{configuration}' was "
                                  f"not preprocessed; {fix}")
    dataset_json = dataset_folder / "dataset.json"
    file_ending = _read_json(dataset_json).get("file_ending") if dataset_json.is_file() else None
    return {"dataset_name": name, "dataset_folder": dataset_folder, "plans_file": plans_file,
            "data_identifier": data_identifier, "data_folder": data_folder, "cases": cases,
            "file_ending": file_ending}


def list_cases(data_folder) -> list[str]:
    """Case ids of an nnU-Net data folder: any case with a `.pkl` or a data `.b2nd` (so a case
    whose `.b2nd` went missing is still listed, and then reported)."""
    data_folder = Path(data_folder)
    if not data_folder.is_dir():
        return []
    cases = {p.name[:-4] for p in data_folder.glob("*.pkl")}
    cases |= {p.name[:-5] for p in data_folder.glob("*.b2nd") if not p.name.endswith("_seg.b2nd")}
    return sorted(c for c in cases if not c.startswith("."))


def resolve_generator(generator: Callable | None, settings):
    """The default generator (imported only now) and its default settings when none are given."""
    if generator is not None:
        return generator, settings
    try:
        classical = importlib.import_module("nnunet_mass.masks.classical")
    except ModuleNotFoundError as error:
        if error.name != "nnunet_mass.masks.classical":
            raise
        raise MaskGenerationError(f"the classical mask generator ({DEFAULT_GENERATOR}) is not installed; import "
                                  f"label maps only with --from-labels DIR --labels-only") from error
    if settings is None and hasattr(classical, "ProposalSettings"):
        settings = classical.ProposalSettings()
    return classical.propose_masks, settings


def run_metadata(layout: dict, configuration: str, plans_identifier: str, generator, settings,
                 from_labels) -> dict:
    generator_info = None
    if generator is not None:
        module = importlib.import_module(generator.__module__) if getattr(generator, "__module__", None) else None
        generator_info = {"name": getattr(module, "GENERATOR_NAME", _callable_name(generator)),
                          "function": _callable_name(generator), "settings": settings}
    return {"dataset": layout["dataset_name"], "plans_identifier": plans_identifier,
            "configuration": configuration, "data_identifier": layout["data_identifier"],
            "generator": generator_info,
            "labels": None if from_labels is None else {"folder": str(Path(from_labels).resolve())}}


def generate_case_masks(case: str, job: CaseJob) -> CaseResult:
    """Make and save one case's masks; every error comes back as the result's reason."""
    start = time.perf_counter()
    try:
        stack, data_shape, spacing = build_case_stack(case, job)
        metadata = {**job.metadata, "data_shape": list(data_shape), "spacing_zyx": list(spacing)}
        patch_size = _plans_manager(job.plans_file).get_configuration(job.configuration).patch_size
        save_mask_stack(job.mask_folder, case, stack, metadata, patch_size=patch_size)
        return CaseResult(case, len(stack), seconds=time.perf_counter() - start)
    except _EXPECTED_ERRORS as error:
        return CaseResult(case, error=str(error), seconds=time.perf_counter() - start)
    except Exception as error:  # a generator bug in one case must not stop the others
        return CaseResult(case, error=f"{type(error).__name__}: {error}", details=traceback.format_exc(),
                          seconds=time.perf_counter() - start)


def build_case_stack(case: str, job: CaseJob) -> tuple[MaskStack, tuple, tuple]:
    """(masks, nnU-Net data shape (C, z, y, x), spacing (z, y, x)) of one case."""
    data, properties = load_preprocessed_case(job.data_folder, case)
    plans_manager = _plans_manager(job.plans_file)
    configuration_manager = plans_manager.get_configuration(job.configuration)
    spacing = case_spacing(properties, plans_manager, configuration_manager)
    image = np.ascontiguousarray(data[:], dtype=np.float32)  # (C, z, y, x), decompressed once
    if not np.all(np.isfinite(image)):
        bad = int(np.count_nonzero(~np.isfinite(image)))
        raise CaseInputError(f"the preprocessed image has {bad} NaN/infinite voxel(s) ({job.data_folder}/{case}"
                             f".b2nd); check the raw image and run nnUNetv2_preprocess again")
    stacks = []
    # Mixed with generated masks, a case without a label map (an unlabeled source of a pool) just imports nothing.
    if job.labels_folder is not None and (job.generator is None or has_label_file(job.labels_folder, case)):
        stacks.append(import_label_masks(case, job.labels_folder, properties, image.shape, plans_manager,
                                         configuration_manager, job.label_ending))
    if job.generator is not None:
        check_image_for_proposals(image)
        generated = job.generator(image, spacing, job.settings)
        stacks.append(check_generated(generated, image.shape))
    stack = concatenate_stacks(stacks)
    if len(stack) == 0:
        raise CaseInputError("no masks: the label map is empty on the preprocessed grid and no generator ran"
                             if job.generator is None else "the generator proposed no masks")
    return stack, image.shape, spacing


def load_preprocessed_case(data_folder, case: str):
    """(blosc2 data (C, z, y, x), properties) of an nnU-Net case, memory-mapped."""
    import blosc2

    data_folder = Path(data_folder)
    files = {ending: data_folder / f"{case}{ending}" for ending in (".b2nd", ".pkl")}
    missing = [p.name for p in files.values() if not p.is_file()]
    if missing:
        present = [p.name for p in files.values() if p.is_file()]
        raise CaseInputError(f"{', '.join(missing)} missing in {data_folder}"
                             + (f" ({', '.join(present)} is there)" if present else "")
                             + ": the preprocessing of this case is incomplete; run nnUNetv2_preprocess (or "
                               "nnUNetv2_plan_and_preprocess) for this configuration again")
    try:
        mmap = {} if os.name == "nt" else {"mmap_mode": "r"}
        data = blosc2.open(urlpath=str(files[".b2nd"]), mode="r", dparams={"nthreads": 1}, **mmap)
        with open(files[".pkl"], "rb") as handle:
            properties = pickle.load(handle)
    except Exception as error:
        raise CaseInputError(f"cannot read the preprocessed files of case {case} in {data_folder}: "
                             f"{type(error).__name__}: {error}") from error
    if len(data.shape) != 4:
        raise CaseInputError(f"{files['.b2nd'].name} has shape {data.shape}; nnU-Net data is (C, z, y, x)")
    return data, properties


def case_spacing(properties: dict, plans_manager, configuration_manager) -> tuple:
    """Voxel spacing (mm) of the preprocessed array's axes (z, y, x)."""
    spacing = [float(s) for s in configuration_manager.spacing]
    if len(spacing) == 2:  # 2d configurations keep each case's own slice spacing
        spacing = [float(properties["spacing"][plans_manager.transpose_forward[0]]), *spacing]
    return tuple(spacing)


def check_image_for_proposals(image: np.ndarray) -> None:
    """Reject what a 3D proposal generator cannot work on, with the reason."""
    if min(image.shape[1:]) < 2:
        raise CaseInputError(f"the preprocessed image has shape {list(image.shape)} (C, z, y, x): a single-voxel "
                             f"dimension; 3D mask proposals need at least 2 voxels along every axis")
    if all(float(channel.min()) == float(channel.max()) for channel in image):
        raise CaseInputError(f"the preprocessed image is constant ({float(image.flat[0]):g} everywhere): there is "
                             f"no foreground/body to propose masks in")


def check_generated(stack, data_shape) -> MaskStack:
    if not isinstance(stack, MaskStack):
        raise TypeError(f"the generator returned {type(stack).__name__}, not a MaskStack")
    if tuple(stack.layers.shape[1:]) != tuple(data_shape[1:]):
        raise ValueError(f"the generator returned layers of shape {list(stack.layers.shape)} for an image of "
                         f"shape {list(data_shape)}; masks must lie on the image grid")
    return stack


def concatenate_stacks(stacks: list[MaskStack]) -> MaskStack:
    """One stack: the layers of each in turn, mask indices shifted accordingly."""
    stacks = [s for s in stacks if s.layers.shape[0] > 0]
    if not stacks:
        return MaskStack(np.zeros((0, 1, 1, 1), dtype=np.uint16), [])
    if len(stacks) == 1:
        return stacks[0]
    masks, offset = [], 0
    for stack in stacks:
        masks += [replace(info, layer=info.layer + offset) for info in stack.masks]
        offset += stack.layers.shape[0]
    return MaskStack(np.concatenate([s.layers for s in stacks]), masks)


def _run_cases(cases: list[str], job: CaseJob, num_processes: int):
    with case_mapper(num_processes, len(cases)) as mapper:
        yield from tqdm(mapper(_generate_case_task, [(case, job) for case in cases]), total=len(cases),
                        desc="mask proposals", unit="case", disable=not cases)


def _generate_case_task(task) -> CaseResult:
    return generate_case_masks(*task)



def _finished_and_current(out_folder: Path, data_folder: Path, case: str) -> bool:
    """Finished, and made for data of the shape nnU-Net's data has now (not stale)."""
    if not is_finished(out_folder, case):
        return False
    try:
        stored = _read_json(out_folder / f"{case}.json").get("metadata", {}).get("data_shape")
        data, _ = load_preprocessed_case(data_folder, case)
    except (CaseInputError, ValueError, OSError):
        return False  # let the case run and report what is wrong
    return stored is None or list(stored) == list(data.shape)


def _check_picklable(generator, settings, num_processes: int) -> None:
    if num_processes <= 1:
        return
    try:
        pickle.dumps((generator, settings))
    except Exception as error:
        raise MaskGenerationError(f"the generator {_callable_name(generator)} or its settings cannot be sent to "
                                  f"worker processes ({error}); use a module-level function or num_processes=1"
                                  ) from error


@lru_cache(maxsize=8)
def _plans_manager(plans_file: str):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    return PlansManager(plans_file)


def _read_json(path: Path) -> dict:
    import json

    return json.loads(Path(path).read_text())


def _callable_name(function) -> str:
    module = getattr(function, "__module__", None) or ""
    name = getattr(function, "__qualname__", None) or type(function).__name__
    return f"{module}.{name}" if module else name

