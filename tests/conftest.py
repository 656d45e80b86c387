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
