"""nnUNetv2_mass_adopt: make a raw dataset ready to fine-tune from a pretrained model.

One pretrained model, many fine-tuning datasets: each target gets the pretraining's plans
under a new name (see target_plans.py), so stock `-pretrained_weights` loads every key,
whatever patch size or transpose the target's own planner would have picked. Steps:
compatibility checks (before anything is written) -> fingerprint (nnU-Net's, if missing)
-> plans -> dataset.json beside them -> nnU-Net's preprocessing of that one configuration.

nnU-Net's planning and preprocessing write into $nnUNet_preprocessed/<dataset>. They run
with that variable pointed at a hidden staging folder (nnU-Net reads its paths from the
environment on every use), and the results are moved into place at the end: a failure at
any step leaves the real folder as it was.
"""
import contextlib
import os
import shlex
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from nnunet_mass.bundles.compatibility import AdoptionError, Compatibility, TargetDataset, check_compatibility, \
    load_target
from nnunet_mass.bundles.source import PretrainedSource, open_pretrained_source
from nnunet_mass.bundles.target_plans import adopted_plans, check_plans_name, default_plans_name, renamed_identifier
from nnunet_mass.downstream.model import DEFAULT_CHECKPOINT
from nnunet_mass.unlabeled.prepare import move_into_place, staging_folder

FINETUNE_TRAINER = "nnUNetTrainerMASSFinetune"
FINGERPRINT = "dataset_fingerprint.json"
GROUND_TRUTH = "gt_segmentations"  # nnU-Net's copy of labelsTr, for validation without the raw data


@dataclass(frozen=True)
class AdoptionResult:
    dataset_name: str
    plans_name: str
    configuration: str
    preprocessed_folder: Path
    train_command: str


def adopt(model, dataset, plans_name: str | None = None, num_processes: int | None = None,
          fold: str | None = None, checkpoint_name: str = DEFAULT_CHECKPOINT, overwrite: bool = False,
          verify_dataset_integrity: bool = False, pretraining_intensities: bool = False) -> AdoptionResult:
    """Plan and preprocess raw dataset `dataset` with the plans of `model` (bundle zip or model folder)."""
    from nnunetv2.configuration import default_num_processes

    source = open_pretrained_source(model, fold, checkpoint_name)
    target = load_target(dataset)
    plans_name = plans_name or default_plans_name(source)
    check_plans_name(plans_name)
    compatibility = check_compatibility(source, target)
    for warning in compatibility.warnings:
        print(f"warning: {warning}")
    folder = _preprocessed_root() / target.name
    data_identifier = _data_identifier(source, plans_name)
    _check_free(folder, plans_name, data_identifier, overwrite)
    if verify_dataset_integrity:
        _verify_integrity(target, num_processes or default_num_processes)

    with staging_folder(folder.parent, target.name) as staging:
        staged = _prepare(source, target, plans_name, compatibility, staging, folder,
                          num_processes or default_num_processes, pretraining_intensities)
        commit(staged, folder, _items_to_move(folder, plans_name, data_identifier))
        shutil.rmtree(staging, ignore_errors=True)
    return _report(source, target, plans_name, folder)


def _preprocessed_root() -> Path:
    root = os.environ.get("nnUNet_preprocessed")
    if not root:
        raise AdoptionError("nnUNet_preprocessed is not set: export nnUNet_preprocessed=/path/to/nnUNet_preprocessed")
    Path(root).mkdir(parents=True, exist_ok=True)
    return Path(root)


def _data_identifier(source: PretrainedSource, plans_name: str) -> str:
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    identifier = PlansManager(source.plans).get_configuration(source.configuration).data_identifier
    return renamed_identifier(identifier, source.plans_name, plans_name)


def _check_free(folder: Path, plans_name: str, data_identifier: str, overwrite: bool) -> None:
    taken = [p for p in (folder / f"{plans_name}.json", folder / data_identifier) if p.exists()]
    if taken and not overwrite:
        raise AdoptionError(f"{taken[0]} already exists: pass --overwrite to replace these plans and their data, "
                            f"or choose another --plans_name. Nothing was written.")


def _verify_integrity(target: TargetDataset, num_processes: int) -> None:
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    try:
        verify_dataset_integrity(str(target.raw_folder), num_processes)
    except (AssertionError, RuntimeError) as error:
        raise AdoptionError(f"nnU-Net's dataset check failed for {target.name}: {error}. Nothing was written.") \
            from None


@contextlib.contextmanager
def nnunet_preprocessed_at(path: Path):
    """nnU-Net's preprocessed folder is `path` inside the block (its spawned workers inherit it too)."""
    previous = os.environ.get("nnUNet_preprocessed")
    os.environ["nnUNet_preprocessed"] = str(path)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("nnUNet_preprocessed", None)
        else:
            os.environ["nnUNet_preprocessed"] = previous


def _prepare(source: PretrainedSource, target: TargetDataset, plans_name: str, compatibility: Compatibility,
             staging: Path, folder: Path, num_processes: int, pretraining_intensities: bool = False) -> Path:
    """Everything nnU-Net needs for training, written under `staging`/<dataset>; returns that folder.
    An existing fingerprint in the real `folder` is reused: nnU-Net's planner would reuse it too."""
    import json

    from nnunetv2.experiment_planning import plan_and_preprocess_api as api

    staged = staging / target.name
    staged.mkdir()
    shutil.copyfile(target.raw_folder / "dataset.json", staged / "dataset.json")  # nnU-Net's preprocessor reads it here
    existing_fingerprint = folder / FINGERPRINT
    if existing_fingerprint.is_file():
        shutil.copyfile(existing_fingerprint, staged / FINGERPRINT)
    with nnunet_preprocessed_at(staging):
        if not existing_fingerprint.is_file():
            _nnunet_step("fingerprint extraction", target, lambda: api.extract_fingerprint_dataset(
                target.dataset_id, num_processes=num_processes, verbose=False))
        fingerprint = json.loads((staged / FINGERPRINT).read_text())
        plans = adopted_plans(source, target.name, plans_name, fingerprint, compatibility.reader_writer,
                              pretraining_intensities)
        (staged / f"{plans_name}.json").write_text(json.dumps(plans, indent=4))
        _nnunet_step("preprocessing", target, lambda: api.preprocess_dataset(
            target.dataset_id, plans_name, (source.configuration,), [num_processes], verbose=False))
    return staged


def _nnunet_step(what: str, target: TargetDataset, step) -> None:
    try:
        step()
    except Exception as error:
        raise AdoptionError(f"nnU-Net's {what} failed for {target.name}: {type(error).__name__}: {error}. "
                            f"Nothing was written.") from error


def _items_to_move(folder: Path, plans_name: str, data_identifier: str) -> list[str]:
    """In order; the plans come last, so the data they name is in place before they are."""
    keep_existing = [name for name in (FINGERPRINT, GROUND_TRUTH) if not (folder / name).exists()]
    return [data_identifier, *keep_existing, "dataset.json", f"{plans_name}.json"]


def commit(staged: Path, folder: Path, names: list[str]) -> None:
    """Move `staged`/<name> to `folder`/<name> for each name, replacing what is there: all or nothing.

    A new dataset folder is one rename. Into an existing one, replaced entries are first
    renamed aside and only deleted once every entry is in place; a failure puts them back.
    """
    if not folder.exists():
        move_into_place(staged, folder, [])
        return
    token = uuid.uuid4().hex[:8]
    moved = []  # (entry in folder, its previous version renamed aside, or None)
    try:
        for name in names:
            if not (staged / name).exists():
                continue
            entry, aside = folder / name, None
            if entry.exists():
                aside = folder / f".{name}.old-{token}"
                entry.rename(aside)
            moved.append((entry, aside))
            (staged / name).rename(entry)
    except BaseException:
        for entry, aside in reversed(moved):
            _remove(entry)
            if aside is not None:
                aside.rename(entry)
        raise
    for _, aside in moved:
        if aside is not None:
            _remove(aside)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _report(source: PretrainedSource, target: TargetDataset, plans_name: str, folder: Path) -> AdoptionResult:
    command = (f"nnUNetv2_train {target.dataset_id} {source.configuration} 0 -tr {FINETUNE_TRAINER} -p {plans_name} "
               f"-pretrained_weights {shlex.quote(str(source.weights))}")
    print(f"\n{target.name} adopted the plans of {source.dataset_name} ({source.plans_name}, {source.configuration}) "
          f"as {plans_name}; preprocessed data in {folder}.\nFine-tune (fold 0 here; any of 0-4 or all) with:\n"
          f"  {command}")
    return AdoptionResult(target.name, plans_name, source.configuration, folder, command)
