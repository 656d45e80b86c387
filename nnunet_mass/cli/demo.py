"""nnUNetv2_mass_demo: the whole user story on generated phantoms, on CPU, in minutes."""
import argparse
from pathlib import Path

from nnunet_mass.demo import DemoSettings, run_demo


def main(argv=None) -> None:
    defaults = DemoSettings(workdir=Path("demo_output"))
    parser = argparse.ArgumentParser(
        description="Unlabeled phantoms -> masks -> MASS pretraining -> fine-tuning with 1 and 2 labeled cases, "
                    "from scratch and from the pretraining -> nnUNetv2_predict -> Dice tables, through nnU-Net's "
                    "stock commands and ours, on CPU.")
    parser.add_argument("--workdir", type=Path, default=defaults.workdir,
                        help="holds nnUNet_raw/_preprocessed/_results of the demo [demo_output]")
    parser.add_argument("--pool-cases", type=int, default=defaults.pool_cases, help="unlabeled scans")
    parser.add_argument("--pretrain-epochs", type=int, default=defaults.pretrain_epochs)
    parser.add_argument("--pretrain-iterations", type=int, default=defaults.pretrain_iterations,
                        help="iterations per pretraining epoch")
    parser.add_argument("--finetune-epochs", type=int, default=defaults.finetune_epochs)
    parser.add_argument("--finetune-iterations", type=int, default=defaults.finetune_iterations,
                        help="iterations per fine-tuning epoch")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    run_demo(DemoSettings(workdir=args.workdir, pool_cases=args.pool_cases, pretrain_epochs=args.pretrain_epochs,
                          pretrain_iterations=args.pretrain_iterations, finetune_epochs=args.finetune_epochs,
                          finetune_iterations=args.finetune_iterations, seed=args.seed))
