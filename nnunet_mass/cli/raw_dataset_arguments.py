"""Flags shared by the commands that write an nnU-Net raw dataset with body-mask labels."""
import argparse


def add_raw_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-np", dest="num_processes", type=int, default=1,
                        help="number of processes (default: 1, in-process)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing dataset with the same id (only once the new one is complete)")
    parser.add_argument("--min_body_ml", type=float, default=50.0,
                        help="skip cases whose body mask is smaller than this, in ml (default: 50)")
