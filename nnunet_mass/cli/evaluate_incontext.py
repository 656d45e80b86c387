"""nnUNetv2_mass_evaluate_incontext: few-shot in-context Dice of a MASS pretraining on a labeled dataset."""
import argparse
import sys

from nnunet_mass.cli.arguments import add_incontext_arguments, checked_device


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Score in-context segmentation on a labeled nnU-Net raw dataset (imagesTr/labelsTr): per label, "
                    "k reference cases drawn by --seed among those containing it (the k=1 references are among the "
                    "k=3 ones); every other case is segmented and scored with nnU-Net's Dice. Writes predictions and "
                    "summary.json, prints Dice per label and k.")
    add_incontext_arguments(parser)
    parser.add_argument("-d", dest="dataset", required=True,
                        help="labeled raw dataset: id or name in $nnUNet_raw (e.g. 3 or Dataset003_Liver), or a folder")
    parser.add_argument("-k", dest="ks", type=int, nargs="+", action="extend", default=None,
                        help="references per label; repeat or list several (-k 1 3) [1]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the reference draw [0]")
    parser.add_argument("-o", dest="output_folder", default=None,
                        help="output folder [<model folder>/fold_X/incontext_<dataset>]")
    parser.add_argument("--labels", nargs="+", type=int, default=None,
                        help="evaluate only these label values [every foreground label of dataset.json]")
    parser.add_argument("--hd95", action="store_true", help="also compute HD95 (mm)")
    args = parser.parse_args(argv)
    ks = args.ks or [1]
    if min(ks) < 1:
        parser.error("-k must be >= 1")
    device = checked_device(parser, args)
    from nnunet_mass.downstream.evaluate_incontext import EvaluationError, evaluate_incontext
    from nnunet_mass.downstream.incontext import InContextInputError
    from nnunet_mass.downstream.model import NotAPretrainingError

    try:
        evaluate_incontext(args.model_folder, args.dataset, ks, args.seed, args.output_folder, args.labels,
                           args.fold, args.checkpoint, device, args.step_size,
                           args.largest_component, args.hd95)
    except (EvaluationError, InContextInputError, NotAPretrainingError, FileNotFoundError) as error:
        sys.exit(f"nnUNetv2_mass_evaluate_incontext: error: {error}")
