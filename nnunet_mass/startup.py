"""Run at interpreter start by `nnunet_mass_trainers.pth`: registers our trainer folder.

A broken installation must never stop Python from starting, hence the broad guard.
"""
try:
    from nnunet_mass.discovery import register_trainer_folder

    register_trainer_folder()
except Exception:  # noqa: BLE001 - see module docstring
    pass
