"""The README's user story on synthetic data, end to end through the stock and our commands.

unlabeled CT phantoms -> nnUNetv2_mass_prepare_unlabeled -> plan and preprocess (cpu_tiny)
-> nnUNetv2_mass_generate_masks -> nnUNetv2_train -tr nnUNetTrainerMASSPretrain
-> labeled phantoms -> nnUNetv2_mass_adopt -> nnUNetv2_mass_lowlabel (fine-tuning with few
labels, from scratch and from the pretraining, each predicting the held-out cases)
-> nnUNetv2_predict on new scans -> Dice tables.
"""
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from nnunet_mass.stock import cpu_environment, run_stock, train_on_cpu

MARKER = ".nnunet_mass_demo"
CONFIGURATION = "3d_fullres"
PRETRAIN_TRAINER = "nnUNetTrainerMASSPretrain"
ADOPTED_PLANS = "nnUNetPlans_MASSDemo"  # the labeled dataset's copy of the pretraining's plans
FINETUNE_TRAINER = "nnUNetTrainerMASSFinetune_adamw_encoderOnly"  # the recipe that did best at few labels


@dataclass
class DemoSettings:
    workdir: Path
    pool_id: int = 101
    target_id: int = 102
    pool_cases: int = 12
    labeled_cases: int = 8  # of which lowlabel holds 4 out; 1 and 2 of the rest are fine-tuned on
    new_cases: int = 2  # never seen, for nnUNetv2_predict
    pretrain_epochs: int = 25
    pretrain_iterations: int = 100
    finetune_epochs: int = 25
    finetune_iterations: int = 25
    labeled_counts: tuple = (1, 2)
    preset: str = "cpu_tiny"
    seed: int = 0


def _step(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.perf_counter()


def run_demo(settings: DemoSettings) -> dict:
    """Run every step; returns the low-label report (Dice per arm and labeled-case count)."""
    workdir = fresh_workdir(Path(settings.workdir))
    env = cpu_environment(workdir)
    log = workdir / "demo_commands.log"
    timings = {}

    start = _step(f"Unlabeled pool: {settings.pool_cases} CT phantoms -> nnUNetv2_mass_prepare_unlabeled")
    plans = prepare_pool(settings, workdir, env, log)
    timings["pool"] = time.perf_counter() - start

    start = _step("Class-agnostic masks: nnUNetv2_mass_generate_masks")
    run_stock("nnUNetv2_mass_generate_masks", ["-d", settings.pool_id, "-c", CONFIGURATION, "-p", plans,
                                               "-np", 2], env, log)
    timings["masks"] = time.perf_counter() - start

    budget = settings.pretrain_epochs * settings.pretrain_iterations
    start = _step(f"MASS pretraining: nnUNetv2_train -tr {PRETRAIN_TRAINER} ({budget} iterations, CPU)")
    train_on_cpu([settings.pool_id, CONFIGURATION, "all", "-tr", PRETRAIN_TRAINER, "-p", plans],
                 {**env, "nnUNet_MASS_num_epochs": str(settings.pretrain_epochs),
                  "nnUNet_MASS_num_iterations_per_epoch": str(settings.pretrain_iterations),
                  "nnUNet_MASS_num_val_iterations_per_epoch": "5"}, log)
    model = model_folder(env, settings.pool_id, plans)
    timings["pretrain"] = time.perf_counter() - start

    start = _step(f"Labeled dataset: {settings.labeled_cases} CT phantoms -> nnUNetv2_mass_adopt")
    target_plans = adopt_target(settings, model, env, log)
    timings["adopt"] = time.perf_counter() - start

    start = _step(f"Few labels: nnUNetv2_mass_lowlabel, {settings.labeled_counts} labeled cases, "
                  "scratch vs MASS")
    report = low_label(settings, model, target_plans, env, log)
    timings["finetune"] = time.perf_counter() - start

    start = _step("nnUNetv2_predict with the MASS fine-tuned model on new scans")
    summary = predict_new_scans(settings, report, target_plans, workdir, env, log)
    timings["predict"] = time.perf_counter() - start

    print_report(report, summary)
    print("\nTimes (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    print(f"Commands and their output: {log}")
    return report


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


def prepare_pool(settings: DemoSettings, workdir: Path, env: dict, log: Path) -> str:
    """Unlabeled scans -> nnU-Net dataset with body masks -> planned and preprocessed; returns the plans name."""
    from nnunet_mass.phantoms import write_phantom_dataset

    scans = write_phantom_dataset(workdir / "scans", 999, "UnlabeledScans", settings.pool_cases,
                                  seed=settings.seed, labeled=False)
    run_stock("nnUNetv2_mass_prepare_unlabeled", ["-i", scans / "imagesTr", "-d", settings.pool_id,
                                                  "-n", "PhantomPool", "-cn", "CT"], env, log)
    return plan_and_preprocess(settings.pool_id, settings.preset, env, log)


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


def model_folder(env: dict, dataset_id: int, plans: str) -> Path:
    return (Path(env["nnUNet_results"]) / _dataset_name(dataset_id, env)
            / f"{PRETRAIN_TRAINER}__{plans}__{CONFIGURATION}")


def adopt_target(settings: DemoSettings, model: Path, env: dict, log: Path) -> str:
    """Labeled phantoms of another seed, given the pretraining's plans; returns their plans name."""
    from nnunet_mass.phantoms import write_phantom_dataset

    write_phantom_dataset(env["nnUNet_raw"], settings.target_id, "PhantomCT", settings.labeled_cases,
                          seed=settings.seed + 1000)
    run_stock("nnUNetv2_mass_adopt", ["-m", model, "-d", settings.target_id, "-np", 2,
                                      "--plans_name", ADOPTED_PLANS], env, log)
    return ADOPTED_PLANS


def low_label(settings: DemoSettings, model: Path, plans: str, env: dict, log: Path) -> dict:
    from nnunet_mass.downstream.lowlabel import LowLabelExperiment

    checkpoint = model / "fold_all" / "checkpoint_final.pth"
    run_stock("nnUNetv2_mass_lowlabel", [
        "-d", settings.target_id, "-p", plans, "-pretrained_weights", checkpoint,
        "--cases", *settings.labeled_counts, "--seeds", settings.seed, "--test_cases", 4,
        "--epochs", settings.finetune_epochs, "--iterations", settings.finetune_iterations, "-device", "cpu",
        "-tr", FINETUNE_TRAINER],
        env, log)
    experiment = LowLabelExperiment(_dataset_name(settings.target_id, env), CONFIGURATION, plans, checkpoint,
                                    FINETUNE_TRAINER)
    return json.loads((experiment.output_folder(env["nnUNet_results"]) / "results.json").read_text())


def predict_new_scans(settings: DemoSettings, report: dict, plans: str, workdir: Path, env: dict,
                      log: Path) -> dict:
    """Stock nnUNetv2_predict with the MASS model of the most labels, on phantoms no step has seen."""
    from nnunet_mass.downstream.lowlabel_report import PRETRAINED
    from nnunet_mass.phantoms import PHANTOM_LABELS, write_phantom_dataset

    new = write_phantom_dataset(workdir / "new_scans", 998, "NewScans", settings.new_cases,
                                seed=settings.seed + 2000, case_prefix="new")
    run = max((r for r in report["runs"] if r["arm"] == PRETRAINED), key=lambda r: r["num_cases"])
    predictions = workdir / "predictions"
    run_stock("nnUNetv2_predict", ["-i", new / "imagesTr", "-o", predictions, "-d", settings.target_id,
                                   "-c", CONFIGURATION, "-f", run["fold"], "-tr", FINETUNE_TRAINER, "-p", plans,
                                   "-device", "cpu", "-npp", 1, "-nps", 1, "--disable_tta"], env, log)
    return evaluate(new / "labelsTr", predictions, PHANTOM_LABELS)


def evaluate(reference_folder: Path, prediction_folder: Path, labels: dict) -> dict:
    """nnU-Net's own metrics (Dice etc. per label) for every prediction."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    foreground = [v for v in labels.values() if v > 0]
    return compute_metrics_on_folder(str(reference_folder), str(prediction_folder),
                                     str(Path(prediction_folder) / "summary.json"), SimpleITKIO(), ".nii.gz",
                                     foreground, num_processes=1)


def print_report(report: dict, new_scans: dict) -> None:
    from nnunet_mass.downstream.lowlabel_report import format_table
    from nnunet_mass.phantoms import PHANTOM_LABELS

    names = {str(v): k for k, v in PHANTOM_LABELS.items()}
    print("\nHeld-out Dice after fine-tuning on few labeled cases (nnU-Net's validation):")
    print(format_table(report["table"], names))
    print(f"\nnnUNetv2_predict on {len(new_scans['metric_per_case'])} new scans: "
          f"mean Dice {new_scans['foreground_mean']['Dice']:.3f}")
