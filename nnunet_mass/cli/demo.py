"""nnUNetv2_mass_demo: the whole user story on generated phantoms, on CPU, in minutes."""
import argparse
from pathlib import Path

from nnunet_mass.demo import DemoSettings, run_demo


def main(argv=None) -> None:
    defaults = DemoSettings(workdir=Path("demo_output"))
    parser = argparse.ArgumentParser(description="Generate phantoms, plan/preprocess, fine-tune, predict and "
                                                 "print a Dice table, through nnU-Net's stock commands.")
    parser.add_argument("--workdir", type=Path, default=defaults.workdir,
                        help="holds nnUNet_raw/_preprocessed/_results of the demo [demo_output]")
    parser.add_argument("--train-cases", type=int, default=defaults.train_cases)
    parser.add_argument("--test-cases", type=int, default=defaults.test_cases)
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--iterations-per-epoch", type=int, default=defaults.iterations_per_epoch)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    run_demo(DemoSettings(workdir=args.workdir, train_cases=args.train_cases, test_cases=args.test_cases,
                          epochs=args.epochs, iterations_per_epoch=args.iterations_per_epoch, seed=args.seed))
