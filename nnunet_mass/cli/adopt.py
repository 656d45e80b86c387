"""nnUNetv2_mass_adopt: plan and preprocess a raw dataset with a pretrained model's plans, for fine-tuning."""
import argparse
import sys


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Make raw dataset -d ready for nnUNetv2_train -tr nnUNetTrainerMASSFinetune -pretrained_weights "
                    "<model>: checks that channels and dimensionality fit the pretrained network, extracts the "
                    "dataset fingerprint if missing, writes the pretraining's plans (architecture, patch size, "
                    "spacing, normalisation) under a new plans name with this dataset's intensity statistics, and "
                    "runs nnU-Net's preprocessing. Prints the training command. Nothing is left behind on failure.")
    parser.add_argument("-m", dest="model", required=True,
                        help="pretrained model: a bundle zip or a model folder "
                             "(nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>)")
    parser.add_argument("-d", dest="dataset", required=True, help="target dataset id or name, e.g. 102")
    parser.add_argument("-np", dest="num_processes", type=int, default=None,
                        help="processes for fingerprint and preprocessing [nnUNet_def_n_proc or 8]")
    parser.add_argument("--plans_name", default=None,
                        help="name of the target's plans [<pretraining plans>_MASS<pretraining dataset id>]")
    parser.add_argument("-f", dest="fold", default=None, help="fold of a model folder [fold_all or the only fold]")
    parser.add_argument("-chk", dest="checkpoint", default="checkpoint_final.pth",
                        help="checkpoint of a model folder [checkpoint_final.pth]")
    parser.add_argument("--overwrite", action="store_true", help="replace existing plans of that name and their data")
    parser.add_argument("--verify_dataset_integrity", action="store_true",
                        help="run nnU-Net's dataset check first (as nnUNetv2_plan_and_preprocess does)")
    parser.add_argument("--pretraining_intensities", action="store_true",
                        help="keep the pretraining's CT intensity statistics (clip window, mean, std) instead of "
                             "this dataset's, which nnU-Net takes from its labeled foreground only")
    args = parser.parse_args(argv)

    from nnunet_mass.bundles.adopt import adopt  # after --help: imports nnU-Net and torch
    from nnunet_mass.bundles.bundle import BundleError
    from nnunet_mass.bundles.compatibility import AdoptionError
    from nnunet_mass.downstream.model import NotAPretrainingError

    try:
        adopt(args.model, args.dataset, plans_name=args.plans_name, num_processes=args.num_processes,
              fold=args.fold, checkpoint_name=args.checkpoint, overwrite=args.overwrite,
              verify_dataset_integrity=args.verify_dataset_integrity,
              pretraining_intensities=args.pretraining_intensities)
    except (AdoptionError, BundleError, NotAPretrainingError, FileNotFoundError) as error:
        sys.exit(f"nnUNetv2_mass_adopt: error: {error}")
