"""Does the MASS pretext learn? Held-out in-context Dice before, during and after a CPU pretraining.

    python benchmarks/bench_pretext_learning.py --workdir /tmp/bench_pretext --epochs 30 --iterations 50

Steps: CT phantoms -> nnU-Net fingerprint/plan -> cpu_tiny preset -> preprocess -> classical
masks -> nnUNetTrainerMASSPretrain on fold 0 (in this process, through nnU-Net's own
run_training functions). Reported on fold 0's validation cases, which training never sees:
- masks: in-context Dice of pretext episodes on their classical masks (the trainer's
  per-epoch validation curve, plus a fixed-seed evaluation before and after training);
- labels: the same episodes with the phantoms' anatomical labels as the reference masks
  (liver, kidneys, spleen, vessel, vertebrae, lesions), which the pretext never named.
Reference and query are two differently augmented, >= 67%-overlapping views of one scan.
"""
import argparse
import json
import os
import time
from pathlib import Path

DATASET_ID, DATASET_NAME = 151, "PretextPhantoms"
PLANS = "nnUNetPlans_cpuTiny"


def prepare(workdir: Path, cases: int, shape, seed: int) -> None:
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints, plan_experiments,
                                                                      preprocess)

    from nnunet_mass.masks.dataset_masks import generate_dataset_masks
    from nnunet_mass.phantoms import write_phantom_dataset
    from nnunet_mass.plans_presets import write_preset_plans

    if (workdir / "prepared").exists():
        return
    write_phantom_dataset(os.environ["nnUNet_raw"], DATASET_ID, DATASET_NAME, num_cases=cases, seed=seed,
                          shape=shape, overwrite=True)
    extract_fingerprints([DATASET_ID], num_processes=2)
    plan_experiments([DATASET_ID])
    write_preset_plans(Path(os.environ["nnUNet_preprocessed"]) / f"Dataset{DATASET_ID}_{DATASET_NAME}", "cpu_tiny")
    preprocess([DATASET_ID], plans_identifier=PLANS, configurations=("3d_fullres",), num_processes=(2,))
    generate_dataset_masks(DATASET_ID, "3d_fullres", PLANS, num_processes=2, overwrite=True)
    (workdir / "prepared").touch()


def evaluate(trainer, network, episodes: int) -> float:
    from nnunet_mass.training.incontext_eval import evaluate_episodes

    _, val_keys = trainer.do_split()
    loader = trainer.pretext_loader(val_keys, seed=7, batch_size=1)
    return evaluate_episodes(network, loader, val_keys, episodes, trainer.device)["mean_dice"]


def use_label_masks() -> None:
    """Replace the stored masks by one mask per anatomical label (labels only)."""
    from nnunet_mass.masks.dataset_masks import generate_dataset_masks

    labels = Path(os.environ["nnUNet_raw"]) / f"Dataset{DATASET_ID}_{DATASET_NAME}" / "labelsTr"
    generate_dataset_masks(DATASET_ID, "3d_fullres", PLANS, num_processes=2, overwrite=True,
                           from_labels=str(labels), mix_generated=False)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=16)
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 64, 64))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--episodes", type=int, default=8, help="evaluation episodes per validation case")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    args.workdir.mkdir(parents=True, exist_ok=True)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[name] = str(args.workdir / name)
    os.environ.pop("nnUNet_n_proc_DA", None)  # the planner reads it as a thread count
    prepare(args.workdir, args.cases, args.shape, args.seed)

    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    os.environ.update({"nnUNet_n_proc_DA": "0", "nnUNet_compile": "false",
                       "nnUNet_MASS_num_epochs": str(args.epochs),
                       "nnUNet_MASS_num_iterations_per_epoch": str(args.iterations),
                       "nnUNet_MASS_num_val_iterations_per_epoch": "10"})
    torch.manual_seed(args.seed)
    trainer = get_trainer_from_args(str(DATASET_ID), "3d_fullres", 0, "nnUNetTrainerMASSPretrain", PLANS,
                                    device=torch.device("cpu"))
    trainer.initialize()
    untrained = trainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager, 1, 1)
    untrained.load_state_dict(trainer.network.state_dict())
    before = {"masks": evaluate(trainer, untrained, args.episodes)}
    start = time.perf_counter()
    trainer.run_training()
    minutes = (time.perf_counter() - start) / 60
    after = {"masks": evaluate(trainer, trainer.ema.module, args.episodes)}
    use_label_masks()
    before["labels"] = evaluate(trainer, untrained, args.episodes)
    after["labels"] = evaluate(trainer, trainer.ema.module, args.episodes)

    curve = [round(float(d), 3) for d in trainer.logger.get_value("mean_fg_dice", step=None)]
    report = {"epochs": args.epochs, "iterations_per_epoch": args.iterations, "batch_size": trainer.batch_size,
              "patch": list(trainer.crop_shape()), "train_minutes": round(minutes, 1),
              "validation_cases": trainer.do_split()[1], "before": before, "after": after,
              "validation_curve_masks": curve}
    print(json.dumps(report, indent=1))
    (args.workdir / "pretext_learning.json").write_text(json.dumps(report, indent=1))
    print(f"\nheld-out in-context Dice   untrained   after {args.epochs * args.iterations} iterations")
    for kind in ("masks", "labels"):
        print(f"  {kind:<24} {before[kind]:9.3f}   {after[kind]:9.3f}")


if __name__ == "__main__":
    main()
