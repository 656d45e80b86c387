"""nnUNetv2_mass_lowlabel: fine-tuning from scratch vs from pretrained weights on a few labeled cases."""
import argparse
import os
import sys
from pathlib import Path

from nnunet_mass.cli.arguments import add_preprocessed_dataset_arguments


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Low-label experiment on a preprocessed, labeled nnU-Net dataset: hold out fixed test cases, "
                    "keep nested subsets of the remaining training cases, fine-tune each subset from random weights "
                    "and from the pretrained weights with the same budget (stock nnUNetv2_train, one appended "
                    "fold of splits_final.json per subset and seed), predict the held-out cases with the final "
                    "weights (nnU-Net's validation) and print Dice per subset size, both arms side by side. "
                    "Finished runs are reused and interrupted ones resumed. Results: "
                    "$nnUNet_results/<dataset>/mass_lowlabel__<trainer>__<plans>__<configuration>/.")
    add_preprocessed_dataset_arguments(parser)
    parser.add_argument("-pretrained_weights", required=True, type=Path,
                        help="pretraining checkpoint (e.g. .../fold_0/checkpoint_final.pth)")
    sizes = parser.add_argument_group("labeled training cases (one or both)")
    sizes.add_argument("--fractions", nargs="+", type=float, default=(), metavar="F",
                       help="fractions of the training cases, e.g. 0.1 0.2 0.4 1.0 (rounded down)")
    sizes.add_argument("--cases", nargs="+", type=int, default=(), metavar="N", help="numbers of cases, e.g. 1 2")
    parser.add_argument("--seeds", nargs="+", type=int, default=(0, 1, 2),
                        help="one run per seed and size, each with its own subset; seeds that draw the same subset share one run [0 1 2]")
    parser.add_argument("--test_cases", type=int, default=None,
                        help="held-out cases, fixed for all runs [25%% of the dataset]")
    parser.add_argument("--split_seed", type=int, default=0, help="seed of the held-out choice [0]")
    parser.add_argument("-tr", dest="trainer", default="nnUNetTrainerMASSFinetune",
                        help="trainer of the pretrained arm [nnUNetTrainerMASSFinetune]")
    parser.add_argument("-tr_baseline", dest="baseline_trainer", default="",
                        help="trainer of the scratch arm [<-tr>_scratch: the same recipe from random weights]")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of both arms [the trainer's]")
    parser.add_argument("--iterations", type=int, default=None, help="iterations per epoch of both arms")
    parser.add_argument("-device", default="cuda", choices=("cuda", "cpu", "mps"), help="[cuda]")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse(argv)
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    from nnunet_mass.downstream.lowlabel import LowLabelExperiment, low_label_study
    from nnunet_mass.downstream.lowlabel_report import format_table
    from nnunet_mass.training.transfer import IncompatibleWeightsError

    budget = {"nnUNet_MASS_num_epochs": args.epochs, "nnUNet_MASS_num_iterations_per_epoch": args.iterations}
    experiment = LowLabelExperiment(
        maybe_convert_to_dataset_name(args.dataset), args.configuration, args.plans, args.pretrained_weights,
        args.trainer, args.baseline_trainer, args.device,
        {name: str(value) for name, value in budget.items() if value is not None})
    try:
        report = low_label_study(experiment, dict(os.environ), args.seeds, args.cases, args.fractions,
                                 args.test_cases, args.split_seed)
    except (ValueError, FileNotFoundError, IncompatibleWeightsError) as error:
        sys.exit(f"nnUNetv2_mass_lowlabel: error: {error}")
    labels = {str(v): k for k, v in report_labels(experiment).items()}
    print("\n" + format_table(report["table"], labels))
    print(f"\nResults and plot: {experiment.output_folder(os.environ['nnUNet_results'])}")


def report_labels(experiment) -> dict:
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_preprocessed

    labels = load_json(os.path.join(nnUNet_preprocessed, experiment.dataset, "dataset.json"))["labels"]
    return {name: value for name, value in labels.items() if isinstance(value, int)}


if __name__ == "__main__":
    main()
