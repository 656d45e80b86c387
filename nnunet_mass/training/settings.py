"""Trainer hyperparameters that a user may override from the environment.

nnU-Net picks behaviour by trainer name; for quick runs (tests, demos, small datasets)
`nnUNet_MASS_<attribute>=<value>` overrides one attribute of a MASS trainer without a new
class. Resuming with `--c` needs the same environment.
"""
import os
from typing import Mapping

ENV_PREFIX = "nnUNet_MASS_"


def _parse(name: str, raw: str, kind: type):
    """A positive int or float, or for `tuple` a list of positive ints such as `96,96,96`."""
    parse = (lambda text: tuple(int(part) for part in text.replace("x", ",").split(","))) if kind is tuple else kind
    try:
        value = parse(raw)
    except ValueError:
        what = "list of integers like 96,96,96" if kind is tuple else kind.__name__
        raise ValueError(f"{ENV_PREFIX}{name}={raw!r} is not a valid {what}") from None
    if min(value if kind is tuple else (value,)) <= 0:
        raise ValueError(f"{ENV_PREFIX}{name}={raw!r} must be positive")
    return value


def apply_environment_overrides(trainer, tunable: Mapping[str, type],
                                environ: Mapping[str, str] = os.environ) -> dict:
    """Set each attribute in `tunable` ({name: type}) whose variable is in `environ`.

    Returns the applied {name: value} so the trainer can log them.
    """
    applied = {}
    for name, kind in tunable.items():
        raw = environ.get(ENV_PREFIX + name)
        if raw is not None and raw.strip():
            applied[name] = _parse(name, raw.strip(), kind)
            setattr(trainer, name, applied[name])
    return applied
