"""Make nnU-Net find our trainers by name, with no manual step.

nnU-Net looks for `-tr` classes in its own trainer folder and then in every folder listed
in the `nnUNet_extTrainer` environment variable (os.pathsep-separated). We append our
trainer folder to that variable at interpreter start (see `startup.py`), never dropping
what a user already put there. Only the standard library is imported here: this runs in
every Python process of the environment.
"""
import os
from pathlib import Path

from nnunet_mass.resources import shipped_folder

ENV_VAR = "nnUNet_extTrainer"


def trainer_folder() -> Path:
    """The folder holding our trainer modules."""
    return shipped_folder("trainers", marker="nnUNetTrainerMASSFinetune.py")


def with_trainer_folder(current_value: str | None) -> str:
    """`current_value` of nnUNet_extTrainer with our folder appended once (the user's entries first)."""
    ours = str(trainer_folder())
    entries = [e for e in (current_value or "").split(os.pathsep) if e.strip()]
    if ours not in entries:
        entries.append(ours)
    return os.pathsep.join(entries)


def register_trainer_folder(environ=os.environ) -> None:
    environ[ENV_VAR] = with_trainer_folder(environ.get(ENV_VAR))


def export_line(environ=os.environ) -> str:
    """A shell line that sets nnUNet_extTrainer for shells whose Python skips `.pth` files."""
    return f'export {ENV_VAR}="{with_trainer_folder(environ.get(ENV_VAR))}"'
