"""The fine-tuning trainer variants, chosen by name as nnU-Net's own, built in-process."""
import pytest
import torch

from helpers import CPU_TINY_PLANS, PRETRAINED_DATASET, PRETRAINED_DATASET_ID, copy_dataset


@pytest.fixture
def dataset(mass_pretraining, nnunet_env, monkeypatch):
    for variable, value in {"nnUNet_n_proc_DA": "0", "nnUNet_compile": "false", "nnUNet_MASS_num_epochs": "10",
                            "nnUNet_MASS_num_iterations_per_epoch": "1"}.items():
        monkeypatch.setenv(variable, value)
    copy_dataset(mass_pretraining["folders"], nnunet_env, PRETRAINED_DATASET)
    return mass_pretraining


def make_trainer(name: str):
    from nnunetv2.run.run_training import get_trainer_from_args

    trainer = get_trainer_from_args(str(PRETRAINED_DATASET_ID), "3d_fullres", 0, name, CPU_TINY_PLANS,
                                    device=torch.device("cpu"))
    trainer.initialize()
    return trainer


def group_lrs(trainer) -> dict:
    return {group["name"]: group["lr"] for group in trainer.optimizer.param_groups}


def test_schedule_length_and_optimiser_come_from_the_variant_name(dataset, monkeypatch):
    monkeypatch.delenv("nnUNet_MASS_num_epochs")
    assert make_trainer("nnUNetTrainerMASSFinetune_50epochs").num_epochs == 50
    adamw = make_trainer("nnUNetTrainerMASSFinetune_adamw")
    assert isinstance(adamw.optimizer, torch.optim.AdamW) and adamw.initial_lr == 5e-4
    assert isinstance(make_trainer("nnUNetTrainerMASSFinetune").optimizer, torch.optim.SGD)


def test_adamw_encoder_only_transfers_the_encoder_alone(dataset, monkeypatch):
    import nnunetv2.run.run_training as run_training

    from nnunet_mass.training.transfer import plain_state

    # initialize() routes nnU-Net's weight loading through ours; undo that after the test
    monkeypatch.setattr(run_training, "load_pretrained_weights", run_training.load_pretrained_weights)
    trainer = make_trainer("nnUNetTrainerMASSFinetune_adamw_encoderOnly")
    assert isinstance(trainer.optimizer, torch.optim.AdamW) and trainer.initial_lr == 5e-4
    fresh_decoder = {k: v.clone() for k, v in trainer.network.decoder.state_dict().items() if "encoder." not in k}
    run_training.load_pretrained_weights(trainer.network, str(dataset["checkpoint"]), verbose=False)
    pretrained = plain_state(torch.load(dataset["checkpoint"], map_location="cpu", weights_only=False)["network_weights"])
    assert all(torch.equal(v, pretrained[f"encoder.{k}"]) for k, v in trainer.network.encoder.state_dict().items())
    decoder = trainer.network.decoder.state_dict()
    assert all(torch.equal(v, decoder[k]) for k, v in fresh_decoder.items())
    assert any(not torch.equal(v, pretrained[f"decoder.{k}"]) for k, v in fresh_decoder.items())
    assert not make_trainer("nnUNetTrainerMASSFinetune_adamw_encoderOnly_scratch").accepts_pretrained_weights


def test_pretrained_layers_learn_at_a_tenth_of_the_new_layers_rate(dataset):
    trainer = make_trainer("nnUNetTrainerMASSFinetune_lowerPretrainedLR")
    trainer.lr_scheduler.step(3)
    lrs = group_lrs(trainer)
    assert lrs["encoder"] == pytest.approx(0.1 * lrs["new"]) and lrs["decoder"] == pytest.approx(0.1 * lrs["new"])
    new = {id(p) for g in trainer.optimizer.param_groups if g["name"] == "new" for p in g["params"]}
    assert new == {id(p) for n, p in trainer.network.named_parameters() if ".seg_layers." in n}


def test_the_frozen_encoder_does_not_change_until_it_is_unfrozen(dataset):
    trainer = make_trainer("nnUNetTrainerMASSFinetune_frozenEncoder")
    assert trainer.frozen_encoder_epochs() == 1
    trainer.on_train_start()
    try:
        encoder = {k: v.clone() for k, v in trainer.network.encoder.state_dict().items()}
        decoder = {k: v.clone() for k, v in trainer.network.decoder.state_dict().items() if "encoder." not in k}
        trainer.on_train_epoch_start()
        assert group_lrs(trainer)["encoder"] == 0 and group_lrs(trainer)["decoder"] > 0
        trainer.train_step(next(trainer.dataloader_train))
        assert all(torch.equal(v, trainer.network.encoder.state_dict()[k]) for k, v in encoder.items())
        assert any(not torch.equal(v, trainer.network.decoder.state_dict()[k]) for k, v in decoder.items())
        trainer.current_epoch = 1
        trainer.on_train_epoch_start()
        assert group_lrs(trainer)["new"] > 0 and group_lrs(trainer)["encoder"] == pytest.approx(group_lrs(trainer)["new"])
    finally:
        trainer.on_train_end()


def test_the_scratch_arm_refuses_pretrained_weights(dataset):
    import nnunetv2.run.run_training as run_training

    original = run_training.load_pretrained_weights
    try:
        trainer = make_trainer("nnUNetTrainerMASSFinetune_scratch")
        with pytest.raises(ValueError, match="trains from random weights"):
            run_training.load_pretrained_weights(trainer.network, str(dataset["checkpoint"]), verbose=True)
    finally:
        run_training.load_pretrained_weights = original
