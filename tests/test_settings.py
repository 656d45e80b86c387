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
