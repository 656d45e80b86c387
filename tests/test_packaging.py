import importlib
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _scripts():
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("name", sorted(_scripts()))
def test_every_console_script_target_exists(name):
    module_name, function = _scripts()[name].split(":")
    assert callable(getattr(importlib.import_module(module_name), function))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out,
                    REPO], check=True)
    return next(out.glob("nnunet_mass-*.whl"))


def test_wheel_ships_trainers_and_presets_inside_the_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "nnunet_mass/trainers/nnUNetTrainerMASSFinetune.py" in names
    assert "nnunet_mass/plans/cpu_tiny.json" in names
    assert "nnunet_mass_trainers.pth" in names
    assert not [n for n in names if n.split("/")[0] in ("trainers", "plans", "tests")]


def test_regular_install_registers_the_installed_trainer_folder(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", site, wheel], check=True)
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    # -S skips the venv's own .pth files (which point at the source tree); addsitedir runs the wheel's.
    code = ("import site, sys, os; site.addsitedir(sys.argv[1]); import nnunet_mass; "
            "print(nnunet_mass.__file__); print(os.environ['nnUNet_extTrainer'])")
    out = subprocess.run([sys.executable, "-S", "-c", code, site], env=env, cwd=tmp_path, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[0] == str(site / "nnunet_mass" / "__init__.py")
    assert out[1] == str(site / "nnunet_mass" / "trainers")
