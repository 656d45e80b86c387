"""nnUNetv2_mass_import_pretrained: a bundle zip -> a model folder in nnUNet_results."""
import argparse
import sys


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Unpack a pretrained-model bundle (made by nnUNetv2_mass_export_pretrained) into "
                    "$nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>/fold_<f>/, where nnU-Net's and "
                    "nnunet-mass's commands find it. Every file is checked before anything is written.")
    parser.add_argument("bundle", help="the bundle zip")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing model folder of the same name")
    args = parser.parse_args(argv)

    from nnunet_mass.bundles.bundle import BundleError  # after --help: imports torch
    from nnunet_mass.bundles.install import import_pretrained

    try:
        import_pretrained(args.bundle, overwrite=args.overwrite)
    except BundleError as error:
        sys.exit(f"nnUNetv2_mass_import_pretrained: error: {error}")
