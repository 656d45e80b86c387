import os

import pytest


@pytest.fixture
def nnunet_env(tmp_path, monkeypatch):
    """nnU-Net's three folders under tmp_path, set in this process's environment."""
    from nnunet_mass.stock import nnunet_folders

    folders = nnunet_folders(tmp_path)
    for name, value in folders.items():
        monkeypatch.setenv(name, value)
    return {name: os.fspath(value) for name, value in folders.items()}


@pytest.fixture(scope="session")
def mass_pretraining(tmp_path_factory):
    """One tiny MASS pretraining shared read-only by the downstream tests (see helpers.short_pretraining)."""
    from helpers import short_pretraining

    return short_pretraining(tmp_path_factory.mktemp("mass_pretraining"))
