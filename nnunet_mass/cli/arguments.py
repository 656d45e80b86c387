"""Flags that several nnUNetv2_mass_* commands share, declared once."""
import argparse


def add_raw_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """For commands that write an nnU-Net raw dataset with body-mask labels."""
    parser.add_argument("-np", dest="num_processes", type=int, default=1,
                        help="number of processes (default: 1, in-process)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing dataset with the same id (only once the new one is complete)")
    parser.add_argument("--min_body_ml", type=float, default=50.0,
                        help="skip cases whose body mask is smaller than this, in ml (default: 50)")


def add_pretrained_model_arguments(parser: argparse.ArgumentParser) -> None:
    """-m/-f/-chk naming a MASS pretraining checkpoint, as nnUNetv2_predict names a model."""
    parser.add_argument("-m", dest="model_folder", required=True,
                        help="MASS pretraining model folder (nnUNet_results/DatasetXXX/"
                             "nnUNetTrainerMASSPretrain__<plans>__<configuration>)")
    parser.add_argument("-f", dest="fold", default=None, help="fold [fold_all if present, else the only fold]")
    parser.add_argument("-chk", dest="checkpoint", default="checkpoint_final.pth",
                        help="checkpoint file name [checkpoint_final.pth]")


def add_incontext_arguments(parser: argparse.ArgumentParser) -> None:
    """The in-context commands' flags: -m/-f/-chk/-device/-step_size, as nnUNetv2_predict names them."""
    add_pretrained_model_arguments(parser)
    parser.add_argument("-device", dest="device", default="cuda", choices=("cuda", "cpu", "mps"),
                        help="device [cuda]")
    parser.add_argument("-step_size", dest="step_size", type=float, default=0.5,
                        help="sliding-window step as a fraction of the window [0.5]")
    parser.add_argument("--largest_component", action="store_true",
                        help="keep only the largest connected component of each label")


def checked_device(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """The torch device of -device, after checking -step_size and that a CUDA GPU exists when asked for."""
    if not 0 < args.step_size <= 1:
        parser.error("-step_size must be in (0, 1]")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("-device cuda: no CUDA GPU is available here; use -device cpu")
    return torch.device(args.device)


def add_preprocessed_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """-d/-c/-p naming a preprocessed configuration, as nnU-Net's own commands do."""
    parser.add_argument("-d", dest="dataset", required=True, help="dataset id or name, e.g. 101 or Dataset101_X")
    parser.add_argument("-c", dest="configuration", default="3d_fullres", help="configuration [3d_fullres]")
    parser.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier [nnUNetPlans]")
