"""The pretrained model that a fine-tuning dataset adopts: a bundle zip or a model folder.

Adoption needs only the pretraining's plans, dataset.json and configuration name, plus
the path that `-pretrained_weights` will take; both forms provide them.
"""
import json
from dataclasses import dataclass
from pathlib import Path

from nnunet_mass.bundles.bundle import BundleError, OpenBundle, is_bundle
from nnunet_mass.downstream.model import DEFAULT_CHECKPOINT, model_checkpoint


@dataclass(frozen=True)
class PretrainedSource:
    plans: dict
    dataset_json: dict
    configuration: str
    weights: Path  # what `-pretrained_weights` takes: the bundle itself, or the folder's checkpoint

    @property
    def dataset_name(self) -> str:
        return self.plans["dataset_name"]

    @property
    def plans_name(self) -> str:
        return self.plans["plans_name"]


def open_pretrained_source(path, fold: str | None = None,
                           checkpoint_name: str = DEFAULT_CHECKPOINT) -> PretrainedSource:
    path = Path(path).resolve()
    if path.is_dir():
        return _from_model_folder(path, fold, checkpoint_name)
    if is_bundle(path):
        with OpenBundle(path) as bundle:
            return PretrainedSource(bundle.read_json("plans.json"), bundle.read_json("dataset.json"),
                                    bundle.manifest.configuration, path)
    if path.is_file():
        OpenBundle(path)  # raises with the reason: not a zip, no manifest, other format, ...
    raise BundleError(f"{path} is neither a pretrained-model bundle (.zip) nor an nnU-Net model folder")


def _from_model_folder(folder: Path, fold: str | None, checkpoint_name: str) -> PretrainedSource:
    import torch

    checkpoint_file = model_checkpoint(folder, fold, checkpoint_name)
    # mmap: only init_args is needed, the weights stay on disk
    checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=False, mmap=True)
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint or "init_args" not in checkpoint:
        raise BundleError(f"{checkpoint_file} is not an nnU-Net checkpoint (no network_weights/init_args)")
    return PretrainedSource(json.loads((folder / "plans.json").read_text()),
                            json.loads((folder / "dataset.json").read_text()),
                            checkpoint["init_args"]["configuration"], checkpoint_file)
