"""Does MASS pretraining help with few labels? Fine-tuning from scratch vs from a pretraining.

    python benchmarks/bench_lowlabel.py --workdir /tmp/bench_lowlabel -m <pretraining model folder> \\
        --cases 1 2 --seeds 0 1 2 --epochs 40 --iterations 25

Labeled CT phantoms of a seed the pretraining never saw -> nnUNetv2_mass_adopt (the
pretraining's plans) -> nnUNetv2_mass_lowlabel: for each seed and labeled-case count,
`-tr` from the pretraining and its `_scratch` twin (the same recipe) from random weights,
same budget, scored on the same held-out cases by nnU-Net's validation. Prints the table
(mean ± std over seeds); results.json and a plot lie beside the runs. Finished runs are
reused, so a second call with more seeds only trains what is missing.
"""
import argparse
from pathlib import Path

from nnunet_mass.stock import cpu_environment, run_stock

TARGET_ID = 152


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("-m", dest="model", type=Path, required=True, help="pretraining model folder")
    parser.add_argument("-f", dest="fold", default=None, help="fold of the pretraining [the only one]")
    parser.add_argument("--labeled", type=int, default=12, help="labeled phantoms (4 are held out) [12]")
    parser.add_argument("--cases", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--iterations", type=int, default=25)
    parser.add_argument("-tr", dest="trainer", default="nnUNetTrainerMASSFinetune")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per training (OMP_NUM_THREADS)")
    args = parser.parse_args(argv)

    from nnunet_mass.downstream.model import model_checkpoint
    from nnunet_mass.phantoms import write_phantom_dataset

    checkpoint = model_checkpoint(args.model, args.fold)
    env = cpu_environment(args.workdir, {"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})
    log = args.workdir / "bench_commands.log"
    plans = f"nnUNetPlans_MASS_{args.model.parent.name}"  # the target's copy of the pretraining's plans
    if not (Path(env["nnUNet_preprocessed"]) / f"Dataset{TARGET_ID}_LowLabelPhantoms" / f"{plans}.json").is_file():
        write_phantom_dataset(env["nnUNet_raw"], TARGET_ID, "LowLabelPhantoms", args.labeled, seed=4321,
                              overwrite=True)
        run_stock("nnUNetv2_mass_adopt", ["-m", args.model, "-d", TARGET_ID, "-np", 2, "--plans_name", plans],
                  env, log)
    run_stock("nnUNetv2_mass_lowlabel", [
        "-d", TARGET_ID, "-p", plans, "-pretrained_weights", checkpoint, "--cases", *args.cases,
        "--seeds", *args.seeds, "--test_cases", 4, "--epochs", args.epochs, "--iterations", args.iterations,
        "-tr", args.trainer, "-device", "cpu"], env, log)
    print(log.read_text().rsplit("$ ", 1)[-1])  # the table nnUNetv2_mass_lowlabel printed


if __name__ == "__main__":
    main()
