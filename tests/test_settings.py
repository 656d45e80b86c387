from types import SimpleNamespace

import pytest

from nnunet_mass.training.settings import apply_environment_overrides

TUNABLE = {"num_epochs": int, "initial_lr": float}


def test_only_variables_that_are_set_are_applied():
    trainer = SimpleNamespace(num_epochs=1000, initial_lr=1e-2)
    applied = apply_environment_overrides(trainer, TUNABLE, {"nnUNet_MASS_num_epochs": "7", "OTHER": "1"})
    assert applied == {"num_epochs": 7}
    assert trainer.num_epochs == 7 and trainer.initial_lr == 1e-2


@pytest.mark.parametrize("raw", ["ten", "1.5", "0", "-3"])
def test_bad_values_name_the_variable(raw):
    with pytest.raises(ValueError, match="nnUNet_MASS_num_epochs"):
        apply_environment_overrides(SimpleNamespace(), TUNABLE, {"nnUNet_MASS_num_epochs": raw})


def test_tuples_parse_as_positive_integer_lists():
    trainer = SimpleNamespace()
    applied = apply_environment_overrides(trainer, {"crop_size": tuple}, {"nnUNet_MASS_crop_size": "96, 80,64"})
    assert trainer.crop_size == (96, 80, 64) == applied["crop_size"]
    for raw in ("96,0,96", "a,b"):
        with pytest.raises(ValueError, match="nnUNet_MASS_crop_size"):
            apply_environment_overrides(trainer, {"crop_size": tuple}, {"nnUNet_MASS_crop_size": raw})
