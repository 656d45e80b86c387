"""nnUNetv2_mass_export_pretrained: a MASS pretraining model folder -> one bundle zip.

The checkpoint is reduced to what downstream needs (the EMA weights, init_args, trainer
name, MASS metadata): optimizer state and raw weights only serve resuming, and would
triple the size.
"""
import importlib.metadata
import io
import json
from pathlib import Path

import torch

from nnunet_mass import __version__
from nnunet_mass.bundles.bundle import BundleError, load_checkpoint_bytes, write_bundle
from nnunet_mass.bundles.model_card import model_card
from nnunet_mass.downstream.model import (DEFAULT_CHECKPOINT, NotAPretrainingError, load_pretraining_checkpoint,
                                          model_checkpoint)
from nnunet_mass.training import checkpoints

KEPT_CHECKPOINT_KEYS = ("network_weights", "init_args", "trainer_name", "inference_allowed_mirroring_axes",
                        "current_epoch", checkpoints.MASS_KEY)
FINGERPRINT = "dataset_fingerprint.json"


def pretraining_model_folder(dataset, configuration: str, plans: str, trainer: str) -> Path:
    """nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>, as nnU-Net names it."""
    from nnunetv2.utilities.file_path_utilities import get_output_folder  # heavy import

    try:
        folder = Path(get_output_folder(dataset, trainer, plans, configuration))
    except RuntimeError as error:
        raise BundleError(f"dataset {dataset} not found: {error}") from None
    if not folder.is_dir():
        raise BundleError(f"no model folder {folder}: check -d, -c, -p and -tr (the pretraining's trainer is "
                          f"nnUNetTrainerMASSPretrain unless you used a variant)")
    return folder


def export_pretrained(model_folder, output_file, fold: str | None = None,
                      checkpoint_name: str = DEFAULT_CHECKPOINT) -> Path:
    """Write the bundle of `model_folder`'s `fold` (default: fold_all or the only fold) to `output_file`."""
    folder = Path(model_folder)
    checkpoint_file = model_checkpoint(folder, fold, checkpoint_name)
    try:
        checkpoint = load_pretraining_checkpoint(checkpoint_file)
    except NotAPretrainingError as error:
        raise BundleError(f"{error}; share a stock nnU-Net model with nnUNetv2_export_model_to_zip") from None
    fold_folder = checkpoint_file.parent.name
    plans = json.loads((folder / "plans.json").read_text())
    dataset_json = json.loads((folder / "dataset.json").read_text())
    identity = _identity(checkpoint, plans, fold_folder, checkpoint_name)
    files = {"plans.json": (folder / "plans.json").read_bytes(),
             "dataset.json": (folder / "dataset.json").read_bytes(),
             identity["checkpoint"]: reduced_checkpoint_bytes(checkpoint, checkpoint_file)}
    files.update(_optional_files(folder, fold_folder))
    summary_name = f"{fold_folder}/validation/summary.json"
    summary = json.loads(files[summary_name]) if summary_name in files else None
    card = model_card(identity, dataset_json, plans, checkpoint[checkpoints.MASS_KEY], summary)
    output = write_bundle(output_file, identity, files, card)
    size_mb = output.stat().st_size / 2 ** 20
    print(f"Exported {checkpoint_file} ({identity['dataset_name']}, {identity['configuration']}) to {output} "
          f"({size_mb:.1f} MiB)")
    return output


def reduced_checkpoint_bytes(checkpoint: dict, where) -> bytes:
    """The downstream part of `checkpoint`, CPU tensors, checked to load with weights_only=True."""
    reduced = {key: checkpoint[key] for key in KEPT_CHECKPOINT_KEYS if key in checkpoint}
    reduced["network_weights"] = {key: value.detach().cpu() for key, value in checkpoint["network_weights"].items()}
    buffer = io.BytesIO()
    torch.save(reduced, buffer)
    data = buffer.getvalue()
    load_checkpoint_bytes(data, str(where))  # fail here, not on the receiving machine
    return data


def _identity(checkpoint: dict, plans: dict, fold_folder: str, checkpoint_name: str) -> dict:
    return {"dataset_name": plans["dataset_name"], "trainer_name": checkpoint["trainer_name"],
            "plans_name": plans["plans_name"], "configuration": checkpoint["init_args"]["configuration"],
            "fold": fold_folder.removeprefix("fold_"), "checkpoint": f"{fold_folder}/{checkpoint_name}",
            "plugin_version": __version__, "nnunet_version": _version("nnunetv2"),
            "torch_version": torch.__version__}


def _optional_files(folder: Path, fold_folder: str) -> dict:
    """The fingerprint (the trainer copies it into the model folder) and the final in-context evaluation."""
    found = {}
    for name in (FINGERPRINT, f"{fold_folder}/validation/summary.json"):
        if (folder / name).is_file():
            found[name] = (folder / name).read_bytes()
        elif name == FINGERPRINT:
            print(f"warning: {folder / name} not found; the bundle will not carry the pretraining's fingerprint")
    return found


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
