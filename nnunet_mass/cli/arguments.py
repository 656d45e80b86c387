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


def add_preprocessed_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """-d/-c/-p naming a preprocessed configuration, as nnU-Net's own commands do."""
    parser.add_argument("-d", dest="dataset", required=True, help="dataset id or name, e.g. 101 or Dataset101_X")
    parser.add_argument("-c", dest="configuration", default="3d_fullres", help="configuration [3d_fullres]")
    parser.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier [nnUNetPlans]")
