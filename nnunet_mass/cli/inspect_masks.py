"""nnUNetv2_mass_inspect_masks: statistics and PNG overlays of stored mask proposals."""
import argparse
import sys

from nnunet_mass.cli.arguments import add_preprocessed_dataset_arguments


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Per-case statistics (masks, sizes in voxels and ml, masks per source, body coverage) and PNG "
                    "overlays of the mask proposals that nnUNetv2_mass_generate_masks stored for a preprocessed "
                    "dataset. Prints a table and a dataset summary; writes <case>.png and stats.json.")
    add_preprocessed_dataset_arguments(parser)
    parser.add_argument("-o", dest="output_folder", default=None,
                        help="folder for the PNGs and stats.json [<mask folder>/qa]")
    parser.add_argument("--cases", nargs="+", default=None, metavar="CASE",
                        help="only these cases [every case with finished masks]")
    parser.add_argument("--num_slices", type=int, default=5, help="slices per overlay, evenly through the body [5]")
    parser.add_argument("--panel_px", type=int, default=192, help="height of one slice in the PNG, pixels [192]")
    args = parser.parse_args(argv)
    if args.num_slices < 1 or args.panel_px < 8:
        parser.error("--num_slices must be >= 1 and --panel_px >= 8")

    from nnunet_mass.masks.dataset_masks import CaseInputError, MaskGenerationError
    from nnunet_mass.masks.inspect import MaskQAError, inspect_dataset_masks
    from nnunet_mass.masks.store import MaskFormatError

    try:
        inspect_dataset_masks(args.dataset, args.configuration, args.plans, args.output_folder, args.cases,
                              args.num_slices, args.panel_px)
    except (MaskQAError, MaskGenerationError, CaseInputError, MaskFormatError, FileNotFoundError) as error:
        sys.exit(f"nnUNetv2_mass_inspect_masks: error: {error}")
