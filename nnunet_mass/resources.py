"""Folders that ship beside the library: `trainers/` and `plans/`.

A wheel installs them inside the package (`nnunet_mass/trainers`); an editable install or
a source checkout keeps them at the repository's top level, beside `nnunet_mass/`.
Standard library only: the interpreter-start hook uses this module.
"""
from pathlib import Path


def shipped_folder(name: str, marker: str) -> Path:
    """The shipped folder `name`, recognised by the file `marker` inside it."""
    package_dir = Path(__file__).resolve().parent
    for candidate in (package_dir / name, package_dir.parent / name):
        if (candidate / marker).is_file():
            return candidate
    raise FileNotFoundError(f"nnunet-mass folder '{name}' not found next to {package_dir}; "
                            "reinstall nnunet-mass")
