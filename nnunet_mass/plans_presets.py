"""Plans presets: JSON files that derive a new nnU-Net plans file from a planned one.

nnU-Net cannot load planners from outside its package, so a preset edits the plans that
`nnUNetv2_plan_experiment` wrote: it keeps spacing, normalisation and the network class,
and replaces patch size, batch size and the network's width and depth. Strides and kernel
sizes are re-derived the way nnU-Net does it, from the patch size and the spacing.

Preset keys (all but `plans_name` optional):
  plans_name            name of the derived plans (file `<plans_name>.json`)
  configuration         which configuration to derive from (default "3d_fullres")
  patch_size            voxels, (z, y, x) like nnU-Net
  batch_size
  features_per_stage    one entry per resolution stage; its length sets the depth
  blocks_per_stage      convolutions (PlainConvUNet) or residual blocks (ResEnc) per encoder stage
  blocks_per_decoder_stage
  spacing               target spacing in mm, (z, y, x); data is then re-preprocessed
"""
import copy
import json
from pathlib import Path

from nnunet_mass.resources import shipped_folder

_ENCODER_BLOCK_KEYS = ("n_conv_per_stage", "n_blocks_per_stage")


def preset_folder() -> Path:
    return shipped_folder("plans", marker="cpu_tiny.json")


def load_preset(name_or_path: str) -> dict:
    """A preset by file path, or by name among the presets shipped in `plans/`."""
    path = Path(name_or_path)
    if not path.is_file():
        path = preset_folder() / f"{name_or_path}.json"
    if not path.is_file():
        shipped = sorted(p.stem for p in preset_folder().glob("*.json"))
        raise FileNotFoundError(f"Plans preset '{name_or_path}' is neither a file nor one of {shipped}")
    preset = json.loads(path.read_text())
    if "plans_name" not in preset:
        raise ValueError(f"Plans preset {path} lacks 'plans_name'")
    return preset


def stage_strides_and_kernels(patch_size, spacing, n_stages: int):
    """Per stage (z, y, x) strides and kernel sizes, nnU-Net style.

    An axis is downsampled while its feature map stays >= 8 voxels and its spacing is at
    most twice the finest one; an axis that is much coarser than the finest gets kernel 1,
    so anisotropic scans are not blurred across thick slices.
    """
    size, current = list(patch_size), list(spacing)
    strides, kernels = [[1] * len(size)], []
    for stage in range(n_stages):
        finest = min(current)
        kernels.append([3 if s <= 2 * finest else 1 for s in current])
        if stage == n_stages - 1:
            break
        stride = [2 if (n >= 8 and s <= 2 * finest) else 1 for n, s in zip(size, current)]
        if stride == [1] * len(size):
            raise ValueError(f"patch_size {list(patch_size)} is too small for {n_stages} stages")
        strides.append(stride)
        size = [n // st for n, st in zip(size, stride)]
        current = [s * st for s, st in zip(current, stride)]
    for axis, n in enumerate(patch_size):
        total = 1
        for stride in strides:
            total *= stride[axis]
        if n % total:
            raise ValueError(f"patch_size {list(patch_size)} must be divisible by {total} along axis {axis}")
    return strides, kernels


def _per_stage(value, n: int, what: str) -> list:
    values = [value] * n if isinstance(value, int) else list(value)
    if len(values) != n:
        raise ValueError(f"{what} needs {n} entries, got {values}")
    return values


def apply_preset(plans: dict, preset: dict) -> dict:
    """A new plans dict with one configuration, derived from `plans` as `preset` says."""
    source = preset.get("configuration", "3d_fullres")
    if source not in plans["configurations"]:
        raise KeyError(f"Configuration '{source}' not in plans {plans['plans_name']}: "
                       f"{sorted(plans['configurations'])}")
    config = copy.deepcopy(plans["configurations"][source])
    config.pop("inherits_from", None)
    for key in ("previous_stage", "next_stage"):
        config.pop(key, None)
    config["data_identifier"] = f"{preset['plans_name']}_{source}"
    for key in ("patch_size", "batch_size", "spacing"):
        if key in preset:
            config[key] = preset[key]
    _apply_architecture(config, preset)
    derived = copy.deepcopy(plans)
    derived["plans_name"] = preset["plans_name"]
    derived["configurations"] = {source: config}
    return derived


def _apply_architecture(config: dict, preset: dict) -> None:
    arch = config["architecture"]["arch_kwargs"]
    features = preset.get("features_per_stage", arch["features_per_stage"])
    n_stages = len(features)
    strides, kernels = stage_strides_and_kernels(config["patch_size"], config["spacing"], n_stages)
    arch.update(n_stages=n_stages, features_per_stage=list(features), strides=strides, kernel_sizes=kernels)
    encoder_key = next((k for k in _ENCODER_BLOCK_KEYS if k in arch), None)
    if encoder_key is None:
        raise KeyError(f"Network arguments have none of {_ENCODER_BLOCK_KEYS}: {sorted(arch)}")
    arch[encoder_key] = _per_stage(preset.get("blocks_per_stage", arch[encoder_key][0]), n_stages,
                                   "blocks_per_stage")
    arch["n_conv_per_stage_decoder"] = _per_stage(
        preset.get("blocks_per_decoder_stage", arch["n_conv_per_stage_decoder"][0]), n_stages - 1,
        "blocks_per_decoder_stage")


def write_preset_plans(preprocessed_dataset_folder: Path, preset_name_or_path: str,
                       source_plans: str = "nnUNetPlans") -> Path:
    """Derive `<plans_name>.json` beside `<source_plans>.json` in a preprocessed dataset folder."""
    folder = Path(preprocessed_dataset_folder)
    source_file = folder / f"{source_plans}.json"
    if not source_file.is_file():
        raise FileNotFoundError(f"{source_file} not found: run nnUNetv2_plan_experiment (or "
                                "nnUNetv2_plan_and_preprocess) for this dataset first")
    preset = load_preset(preset_name_or_path)
    derived = apply_preset(json.loads(source_file.read_text()), preset)
    target = folder / f"{derived['plans_name']}.json"
    target.write_text(json.dumps(derived, indent=4))
    return target
