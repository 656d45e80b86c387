"""nnUNetTrainerMASSPretrain driven in-process through nnU-Net's own run_training functions."""
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from helpers import CPU_TINY_PLANS, copy_dataset, pretraining_phantoms

DATASET_ID = 131
DATASET = "Dataset131_PretrainPhantoms"
TRAINER = "nnUNetTrainerMASSPretrain"
SHORT_RUN = {"nnUNet_MASS_num_epochs": "2", "nnUNet_MASS_num_iterations_per_epoch": "3",
             "nnUNet_MASS_num_val_iterations_per_epoch": "2", "nnUNet_n_proc_DA": "0", "nnUNet_compile": "false"}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return pretraining_phantoms(tmp_path_factory.mktemp("pretrain"), DATASET_ID, DATASET.split("_", 1)[1],
                                num_cases=5, seed=11, shape=(40, 40, 40))


@pytest.fixture
def dataset(pristine, nnunet_env, monkeypatch):
    for variable, value in SHORT_RUN.items():
        monkeypatch.setenv(variable, value)
    folders = copy_dataset(pristine, nnunet_env, DATASET)
    folders["masks"] = folders["preprocessed"] / f"{CPU_TINY_PLANS}_3d_fullres_mass_masks"
    return folders


def make_trainer(fold=0, continue_training=False, trainer=TRAINER):
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint

    nnunet_trainer = get_trainer_from_args(str(DATASET_ID), "3d_fullres", fold, trainer, CPU_TINY_PLANS,
                                           device=torch.device("cpu"))
    maybe_load_checkpoint(nnunet_trainer, continue_training, False)
    return nnunet_trainer


def train(fold=0, continue_training=False):
    """What `nnUNetv2_train` does after building the trainer."""
    trainer = make_trainer(fold, continue_training)
    trainer.run_training()
    trainer.perform_actual_validation()
    return trainer


@pytest.fixture(scope="module")
def trained(pristine, tmp_path_factory):
    """One short pretraining run (2 epochs x 3 iterations), shared by the read-only tests."""
    from nnunet_mass.stock import nnunet_folders

    with pytest.MonkeyPatch.context() as patch:
        folders = nnunet_folders(tmp_path_factory.mktemp("trained"))
        for variable, value in {**folders, **SHORT_RUN}.items():
            patch.setenv(variable, value)
        copy_dataset(pristine, folders, DATASET)
        trainer = train()
        output = Path(trainer.output_folder)
        return {"trainer": trainer, "output": output, "folders": folders,
                "checkpoint": torch.load(output / "checkpoint_final.pth", map_location="cpu", weights_only=False)}


def test_checkpoint_holds_the_ema_for_transfer_and_the_raw_weights_for_resuming(trained):
    checkpoint = trained["checkpoint"]
    ema, raw = checkpoint["network_weights"], checkpoint["raw_network_weights"]
    assert set(ema) == set(raw) and all(v.device.type == "cpu" for v in ema.values())
    assert any(not torch.equal(ema[k], raw[k]) for k in ema if k.startswith("encoder."))
    assert checkpoint["current_epoch"] == 2 and checkpoint["ema_updates"] == 6
    assert checkpoint["trainer_name"] == TRAINER
    assert checkpoint["mass"]["pretext"]["num_masks"] == 13 and checkpoint["mass"]["iterations_done"] == 6
    assert not any(".seg_layers." in k for k in ema)


def test_stock_pretrained_weights_loading_transfers_encoder_and_decoder(trained, tmp_path):
    """nnU-Net's own loader takes network_weights into the plain plans network."""
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    trainer = trained["trainer"]
    plain = nnUNetTrainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager, 1, 7, True)
    torch.save(trained["checkpoint"], tmp_path / "pretrained.pth")
    load_pretrained_weights(plain, str(tmp_path / "pretrained.pth"))
    ema = trained["checkpoint"]["network_weights"]
    plain_state = plain.state_dict()
    transferred = [k for k in plain_state if ".seg_layers." not in k]
    assert any(k.startswith("decoder.") for k in transferred)
    assert all(torch.equal(plain_state[k], ema[k]) for k in transferred)


def test_logs_progress_and_the_final_in_context_evaluation(trained):
    output = trained["output"]
    assert (output / "progress.png").is_file()
    dice = trained["trainer"].logger.get_value("mean_fg_dice", step=None)
    assert len(dice) == 2 and all(0 <= d <= 1 for d in dice)
    summary = json.loads((output / "validation" / "summary.json").read_text())
    assert 0 <= summary["mean_dice"] <= 1 and summary["num_tasks"] > 0
    assert summary["cases"] and set(summary["per_case"]) == set(summary["cases"])
    log = next(output.glob("training_log_*.txt")).read_text()
    assert "In-context Dice of the EMA on held-out masks" in log


def test_continue_resumes_schedule_ema_and_logs(dataset, monkeypatch):
    monkeypatch.setenv("nnUNet_MASS_num_epochs", "1")
    first = train()
    assert first.current_epoch == 1
    monkeypatch.setenv("nnUNet_MASS_num_epochs", "3")
    resumed = train(continue_training=True)
    assert resumed.current_epoch == 3
    assert int(resumed.ema.n_averaged) == 9
    lrs = resumed.logger.get_value("lrs", step=None)
    assert len(lrs) == 3 and lrs[2] == pytest.approx(resumed.lr_scheduler._lr(2 * 3))
    assert len(resumed.logger.get_value("mean_fg_dice", step=None)) == 3


def test_a_nan_loss_stops_with_a_message_and_keeps_the_last_checkpoint(dataset, monkeypatch):
    from nnunet_mass.training.losses import InContextLoss
    from nnunet_mass.training.pretrain import NonFiniteLossError

    original = InContextLoss.forward
    trainer = make_trainer()

    def nan_from_epoch_1(self, logits, targets, valid):
        loss = original(self, logits, targets, valid)
        return loss * float("nan") if trainer.current_epoch >= 1 else loss

    monkeypatch.setattr(InContextLoss, "forward", nan_from_epoch_1)
    with pytest.raises(NonFiniteLossError, match="epoch 1.*checkpoint_latest.pth"):
        trainer.run_training()
    latest = torch.load(Path(trainer.output_folder) / "checkpoint_latest.pth", map_location="cpu", weights_only=False)
    assert latest["current_epoch"] == 1
    assert all(torch.isfinite(v).all() for v in latest["raw_network_weights"].values() if v.is_floating_point())
    live = trainer.network.state_dict()
    assert all(torch.equal(live[k], v) for k, v in latest["raw_network_weights"].items())  # step was not taken


def test_a_dataset_without_masks_names_the_command_that_makes_them(dataset):
    shutil.rmtree(dataset["masks"])
    trainer = make_trainer()
    with pytest.raises(FileNotFoundError, match=f"nnUNetv2_mass_generate_masks -d {DATASET}"):
        trainer.on_train_start()


def test_stock_predict_refuses_the_pretext_network_clearly(trained):
    trainer = trained["trainer"]
    network = type(trainer).build_network_architecture(trainer.plans_manager, trainer.configuration_manager, 1, 7, False)
    with pytest.raises(TypeError, match="nnUNetv2_mass_incontext"):
        network(torch.zeros(1, 1, 32, 32, 32))


def test_the_lamb_variant_uses_lamb_with_masss_peak_lr(dataset):
    trainer = make_trainer(trainer="nnUNetTrainerMASSPretrain_lamb")
    trainer.initialize()
    assert type(trainer.optimizer).__name__ == "Lamb" and trainer.initial_lr == pytest.approx(2e-3)
    assert math.isclose(trainer.optimizer.param_groups[0]["lr"], trainer.lr_scheduler._lr(0))


def test_crop_size_from_the_environment_must_fit_the_network(dataset, monkeypatch):
    monkeypatch.setenv("nnUNet_MASS_crop_size", "24,24,24")
    assert make_trainer().crop_shape() == (24, 24, 24)
    monkeypatch.setenv("nnUNet_MASS_crop_size", "20,24,24")
    with pytest.raises(ValueError, match="divisible by the network's total stride"):
        make_trainer().crop_shape()


def test_masks_are_size_biased_by_default_and_uniform_in_the_mass_variant(dataset):
    assert make_trainer().pretext_settings().mask_size_bias == 0.5
    uniform = make_trainer(trainer="nnUNetTrainerMASSPretrain_uniformMasks")
    assert uniform.pretext_settings().mask_size_bias == 0.0
