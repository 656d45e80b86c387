"""nnUNetv2_mass_export_pretrained: a MASS pretraining model folder -> one shareable bundle zip."""
import argparse
import sys

from nnunet_mass.cli.arguments import add_preprocessed_dataset_arguments


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Write a MASS pretraining (nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>) as "
                    "one bundle zip: the EMA weights with the metadata downstream needs (no optimizer state), "
                    "plans.json, dataset.json, the dataset fingerprint, versions and a MODEL_CARD.md. Install it "
                    "elsewhere with nnUNetv2_mass_import_pretrained, or fine-tune from it directly with "
                    "nnUNetv2_mass_adopt.")
    add_preprocessed_dataset_arguments(parser)
    parser.add_argument("-tr", dest="trainer", default="nnUNetTrainerMASSPretrain",
                        help="pretraining trainer [nnUNetTrainerMASSPretrain]")
    parser.add_argument("-f", dest="fold", default=None,
                        help="fold, e.g. 0 or all [fold_all if present, else the only fold]")
    parser.add_argument("-chk", dest="checkpoint", default="checkpoint_final.pth",
                        help="checkpoint file name [checkpoint_final.pth]")
    parser.add_argument("-o", dest="output", required=True, help="output zip file, e.g. mass_pretrained.zip")
    args = parser.parse_args(argv)

    from nnunet_mass.bundles.bundle import BundleError  # after --help: imports torch
    from nnunet_mass.bundles.export import export_pretrained, pretraining_model_folder
    from nnunet_mass.downstream.model import NotAPretrainingError

    try:
        folder = pretraining_model_folder(args.dataset, args.configuration, args.plans, args.trainer)
        export_pretrained(folder, args.output, args.fold, args.checkpoint)
    except (BundleError, NotAPretrainingError, FileNotFoundError) as error:
        sys.exit(f"nnUNetv2_mass_export_pretrained: error: {error}")
