"""Loading a MASS pretraining model folder for the downstream commands."""
import shutil

import pytest
import torch

from nnunet_mass.downstream.model import NotAPretrainingError, load_pretrained_model, model_checkpoint


def test_loads_the_in_context_network_with_the_ema_weights(mass_pretraining):
    model = load_pretrained_model(mass_pretraining["model_folder"])
    ema = torch.load(mass_pretraining["checkpoint"], map_location="cpu", weights_only=False)["network_weights"]
    state = model.network.state_dict()
    assert all(torch.equal(state[k], v) for k, v in ema.items())
    assert model.configuration == "3d_fullres" and model.num_input_channels == 1
    assert model.metadata["crop_size"] == [32, 32, 32] and not model.network.training


def test_a_stock_model_folder_is_refused_by_name(mass_pretraining, tmp_path):
    folder = tmp_path / "stock"
    shutil.copytree(mass_pretraining["model_folder"], folder)
    checkpoint = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    del checkpoint["mass"]
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(NotAPretrainingError, match="checkpoint_final.pth is not a MASS pretraining"):
        load_pretrained_model(folder)


def test_a_folder_without_plans_or_checkpoint_is_refused(mass_pretraining, tmp_path):
    with pytest.raises(NotAPretrainingError, match="no plans.json"):
        model_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="checkpoint_best_typo.pth"):
        model_checkpoint(mass_pretraining["model_folder"], checkpoint_name="checkpoint_best_typo.pth")
