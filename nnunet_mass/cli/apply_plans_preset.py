"""nnUNetv2_mass_apply_plans_preset: derive a plans file from a preset (see nnunet_mass.plans_presets)."""
import argparse
import json
from pathlib import Path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Derive new nnU-Net plans from planned ones with a preset "
                                                 "(shipped name or JSON file), then preprocess with them.")
    parser.add_argument("-d", required=True, help="dataset name or id")
    parser.add_argument("-preset", required=True, help="preset name (e.g. cpu_tiny) or path to a preset JSON")
    parser.add_argument("-p", default="nnUNetPlans", help="plans to derive from [nnUNetPlans]")
    args = parser.parse_args(argv)

    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    from nnunet_mass.plans_presets import write_preset_plans

    dataset_name = maybe_convert_to_dataset_name(args.d)
    target = write_preset_plans(Path(nnUNet_preprocessed.require()) / dataset_name, args.preset, args.p)
    config = next(iter(json.loads(target.read_text())["configurations"]))
    print(f"Wrote {target}\nPreprocess with:\n  nnUNetv2_preprocess -d {args.d} -plans_name {target.stem} -c {config}")
