"""A MASS pretraining model folder as the downstream commands use it: plans, dataset.json,
the in-context network with the EMA weights, and the pretraining's metadata.

A model folder is what `nnUNetv2_train ... -tr nnUNetTrainerMASSPretrain` writes:
`nnUNet_results/DatasetXXX_Name/<trainer>__<plans>__<configuration>/` holding plans.json,
dataset.json and fold_<f>/<checkpoint>.pth.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunet_mass.training import checkpoints
from nnunet_mass.training.transfer import plain_state

DEFAULT_CHECKPOINT = "checkpoint_final.pth"


class NotAPretrainingError(ValueError):
    pass


@dataclass
class PretrainedModel:
    network: torch.nn.Module  # InContextNetwork, EMA weights, eval mode
    plans_manager: PlansManager
    configuration_manager: ConfigurationManager
    configuration: str
    dataset_json: dict
    metadata: dict  # the checkpoint's `mass` entry: pretext settings, crop size, iterations, version
    folder: Path
    checkpoint: Path

    @property
    def num_input_channels(self) -> int:
        return len(self.dataset_json.get("channel_names", self.dataset_json.get("modality", {"0": None})))


def model_checkpoint(model_folder: Union[str, Path], fold: Optional[str] = None,
                     checkpoint_name: str = DEFAULT_CHECKPOINT) -> Path:
    """The checkpoint file of `fold` (default: fold_all if present, else the only fold)."""
    folder = Path(model_folder)
    for required in ("plans.json", "dataset.json"):
        if not (folder / required).is_file():
            raise NotAPretrainingError(f"{folder} is not an nnU-Net model folder: it has no {required}")
    if fold is None:
        folds = sorted(p.name for p in folder.glob("fold_*") if p.is_dir())
        if "fold_all" in folds:
            folds = ["fold_all"]
        if len(folds) != 1:
            raise FileNotFoundError(f"{folder} holds folds {folds or 'none'}: choose one with -f")
        fold_folder = folder / folds[0]
    else:
        fold_folder = folder / f"fold_{fold}"
    checkpoint = fold_folder / checkpoint_name
    if not checkpoint.is_file():
        raise FileNotFoundError(f"No checkpoint {checkpoint}; has the pretraining finished? "
                                f"(another checkpoint can be chosen with -chk, e.g. checkpoint_best.pth)")
    return checkpoint


def load_pretraining_checkpoint(checkpoint_file: Path) -> dict:
    """The checkpoint dict of a MASS pretraining; NotAPretrainingError for any other checkpoint."""
    checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict) or checkpoints.MASS_KEY not in checkpoint:
        raise NotAPretrainingError(
            f"{checkpoint_file} is not a MASS pretraining checkpoint (no '{checkpoints.MASS_KEY}' entry): "
            "this needs a model trained with nnUNetTrainerMASSPretrain")
    return checkpoint


def load_pretrained_model(model_folder: Union[str, Path], fold: Optional[str] = None,
                          checkpoint_name: str = DEFAULT_CHECKPOINT,
                          device: torch.device = torch.device("cpu")) -> PretrainedModel:
    """The in-context network of a MASS pretraining with its EMA weights, ready for inference."""
    from nnunet_mass.networks.incontext import build_incontext_network

    checkpoint_file = model_checkpoint(model_folder, fold, checkpoint_name)
    checkpoint = load_pretraining_checkpoint(checkpoint_file)
    folder = Path(model_folder)
    dataset_json = load_json(str(folder / "dataset.json"))
    plans_manager = PlansManager(str(folder / "plans.json"))
    configuration = checkpoint["init_args"]["configuration"]
    configuration_manager = plans_manager.get_configuration(configuration)
    model = PretrainedModel(None, plans_manager, configuration_manager, configuration, dataset_json,
                            checkpoint[checkpoints.MASS_KEY], folder, checkpoint_file)
    network = build_incontext_network(plans_manager, configuration_manager, model.num_input_channels)
    network.load_state_dict(plain_state(checkpoint["network_weights"]))
    model.network = network.to(device).eval()
    return model
