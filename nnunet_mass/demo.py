"""The README's main job on synthetic data, end to end through nnU-Net's stock commands.

generate phantoms -> plan and preprocess (tiny CPU plans) -> train nnUNetTrainerMASSFinetune
-> nnUNetv2_predict on held-out cases -> Dice per structure with nnU-Net's evaluation.
Later stages of the MASS story (mask proposals, pretraining) slot in before training.
"""
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from nnunet_mass.stock import cpu_environment, run_stock, train_on_cpu

TRAINER = "nnUNetTrainerMASSFinetune"
MARKER = ".nnunet_mass_demo"
CONFIGURATION = "3d_fullres"


@dataclass
class DemoSettings:
    workdir: Path
    dataset_id: int = 102
    train_cases: int = 8
    test_cases: int = 4
    epochs: int = 40
    iterations_per_epoch: int = 25
    fold: str = "0"
    preset: str = "cpu_tiny"
    seed: int = 0


def _step(title: str):
    print(f"\n=== {title}", flush=True)
    return time.perf_counter()


def run_demo(settings: DemoSettings) -> dict:
    """Run every step; returns nnU-Net's evaluation summary of the held-out predictions."""
    from nnunet_mass.phantoms import PHANTOM_LABELS, write_phantom_dataset

    workdir = fresh_workdir(Path(settings.workdir))
    env = cpu_environment(workdir, {
        "nnUNet_MASS_num_epochs": str(settings.epochs),
        "nnUNet_MASS_num_iterations_per_epoch": str(settings.iterations_per_epoch),
        "nnUNet_MASS_num_val_iterations_per_epoch": "5",
    })
    log = workdir / "demo_commands.log"
    raw, did = Path(env["nnUNet_raw"]), settings.dataset_id
    timings = {}

    start = _step(f"Generating {settings.train_cases} training and {settings.test_cases} held-out CT phantoms")
    write_phantom_dataset(raw, did, "PhantomCT", settings.train_cases, seed=settings.seed)
    heldout = write_phantom_dataset(workdir, did + 1, "PhantomCTHeldout", settings.test_cases,
                                    seed=settings.seed + 10_000, case_prefix="heldout")
    timings["generate"] = time.perf_counter() - start

    start = _step("Planning and preprocessing (nnU-Net fingerprint + planner, then the cpu_tiny preset)")
    plans_name = plan_and_preprocess(did, settings.preset, env, log)
    timings["plan_and_preprocess"] = time.perf_counter() - start

    start = _step(f"Training {TRAINER} ({settings.epochs} x {settings.iterations_per_epoch} iterations, CPU)")
    train_on_cpu([did, CONFIGURATION, settings.fold, "-tr", TRAINER, "-p", plans_name], env, log)
    timings["train"] = time.perf_counter() - start

    start = _step("Predicting the held-out cases with nnUNetv2_predict")
    predictions = workdir / "predictions"
    run_stock("nnUNetv2_predict", ["-i", heldout / "imagesTr", "-o", predictions, "-d", did,
                                   "-c", CONFIGURATION, "-f", settings.fold, "-tr", TRAINER, "-p", plans_name,
                                   "-device", "cpu", "-npp", 1, "-nps", 1, "--disable_tta"], env, log)
    timings["predict"] = time.perf_counter() - start

    summary = evaluate(heldout / "labelsTr", predictions, PHANTOM_LABELS)
    print_dice_table(summary, PHANTOM_LABELS)
    print("\nTimes (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    print(f"Commands and their output: {log}")
    return summary


def fresh_workdir(workdir: Path) -> Path:
    """An empty `workdir`; only a folder an earlier demo made (it holds MARKER) is wiped."""
    workdir = workdir.resolve()
    if workdir.exists() and any(workdir.iterdir()):
        if not (workdir / MARKER).is_file():
            raise FileExistsError(f"{workdir} is not empty and was not made by the demo; choose another --workdir")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).touch()
    return workdir


def plan_and_preprocess(dataset_id: int, preset: str, env: dict, log: Path) -> str:
    """nnU-Net's fingerprint and planner, our preset on top; returns the plans name."""
    from nnunet_mass.plans_presets import write_preset_plans

    run_stock("nnUNetv2_extract_fingerprint", ["-d", dataset_id, "-np", 2, "--verify_dataset_integrity"], env, log)
    run_stock("nnUNetv2_plan_experiment", ["-d", dataset_id], env, log)
    dataset_folder = Path(env["nnUNet_preprocessed"]) / _dataset_name(dataset_id, env)
    plans_file = write_preset_plans(dataset_folder, preset)
    run_stock("nnUNetv2_preprocess", ["-d", dataset_id, "-plans_name", plans_file.stem, "-c", CONFIGURATION,
                                      "-np", 2], env, log)
    return plans_file.stem


def _dataset_name(dataset_id: int, env: dict) -> str:
    matches = sorted(Path(env["nnUNet_raw"]).glob(f"Dataset{dataset_id:03d}_*"))
    if len(matches) != 1:
        raise RuntimeError(f"Expected one raw dataset with id {dataset_id}, found {[m.name for m in matches]}")
    return matches[0].name


def evaluate(reference_folder: Path, prediction_folder: Path, labels: dict) -> dict:
    """nnU-Net's own metrics (Dice etc. per label) for every prediction."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    foreground = [v for v in labels.values() if v > 0]
    return compute_metrics_on_folder(str(reference_folder), str(prediction_folder),
                                     str(Path(prediction_folder) / "summary.json"), SimpleITKIO(), ".nii.gz",
                                     foreground, num_processes=1)


def print_dice_table(summary: dict, labels: dict) -> None:
    print(f"\n{'structure':<14}{'Dice':>8}")
    for name, value in labels.items():
        if value > 0:
            print(f"{name:<14}{summary['mean'][value]['Dice']:>8.3f}")
    print(f"{'mean':<14}{summary['foreground_mean']['Dice']:>8.3f}")
