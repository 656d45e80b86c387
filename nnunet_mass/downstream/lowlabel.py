"""Low-label experiments: the same fine-tuning from random weights and from a pretrained
checkpoint, on nested subsets of a labeled dataset's training cases, scored on fixed
held-out cases.

Every run is an nnU-Net fold: its split (`train` = the subset, `val` = the held-out cases)
is appended to the dataset's splits_final.json after nnU-Net's own five folds, which stay
untouched. `nnUNetv2_train` then trains it and its final validation predicts the held-out
cases with the final weights (never the best checkpoint, which was chosen on them) and
scores them with nnU-Net's own metrics. A run whose validation summary exists is not
repeated, and an interrupted run resumes with `--c`: a crash loses at most one epoch.
"""
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from nnunet_mass.downstream.lowlabel_report import PRETRAINED, SCRATCH, aggregate, plot

DEFAULT_FOLDS = 5  # nnU-Net's own cross-validation, kept in front of ours


@dataclass(frozen=True)
class LowLabelRun:
    num_cases: int
    seed: int
    fold: int
    train: tuple


def cases_from_fractions(fractions: Sequence[float], pool_size: int) -> List[int]:
    """Labeled-case counts for fractions of the training pool (rounded down)."""
    counts = []
    for fraction in fractions:
        if not 0 < fraction <= 1:
            raise ValueError(f"fractions must lie in (0, 1], got {fraction}")
        count = int(math.floor(fraction * pool_size + 1e-9))
        if count == 0:
            raise ValueError(f"fraction {fraction} leaves no case of the {pool_size} training cases; "
                             f"the smallest usable fraction is 1/{pool_size} = {1 / pool_size:.3g}")
        counts.append(count)
    return counts


def held_out_cases(case_ids: Sequence[str], num_test: int, seed: int) -> List[str]:
    """A fixed, seeded choice of test cases that no run ever trains on."""
    if not 0 < num_test < len(case_ids):
        raise ValueError(f"need 0 < test cases < {len(case_ids)} (the dataset's cases), got {num_test}")
    chosen = np.random.default_rng(seed).choice(len(case_ids), num_test, replace=False)
    return sorted(case_ids[i] for i in chosen)


def training_subsets(pool: Sequence[str], counts: Sequence[int], seed: int) -> Dict[int, List[str]]:
    """Nested subsets (each smaller one inside the larger ones) from one seeded order of the pool.

    The order of seed s starts with case s of one fixed shuffle of the pool, so seeds
    0 .. len(pool) - 1 never train their one-case runs on the same case (independent draws
    collide often: two of six seeds did on nine cases).
    """
    if max(counts) > len(pool):
        raise ValueError(f"{max(counts)} labeled cases asked for, but only {len(pool)} are left for training")
    first = np.random.default_rng(0).permutation(len(pool))[seed % len(pool)]
    rest = [i for i in np.random.default_rng(seed).permutation(len(pool)) if i != first]
    order = [pool[i] for i in (first, *rest)]
    return {count: sorted(order[:count]) for count in counts}


def register_folds(splits_file: Path, all_cases: Sequence[str], splits: Sequence[dict]) -> List[int]:
    """Fold indices of `splits` in splits_final.json, appending those not yet there.

    Without a split file, nnU-Net's default five folds are written first (as its trainer
    would), so `-f 0..4` keep their usual meaning.
    """
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    if splits_file.is_file():
        existing = json.loads(splits_file.read_text())
    elif len(all_cases) >= DEFAULT_FOLDS:
        existing = generate_crossval_split(sorted(all_cases), seed=12345, n_splits=DEFAULT_FOLDS)
    else:
        existing = []
    canonical = [_canonical(s) for s in existing]
    folds = []
    for split in splits:
        if _canonical(split) not in canonical:
            existing.append({"train": list(split["train"]), "val": list(split["val"])})
            canonical.append(_canonical(split))
        folds.append(canonical.index(_canonical(split)))
    partial = splits_file.with_name(f".{splits_file.name}.partial")
    partial.write_text(json.dumps(existing, indent=1))
    os.replace(partial, splits_file)
    return folds


def _canonical(split: Mapping) -> tuple:
    return tuple(sorted(split["train"])), tuple(sorted(split["val"]))


def plan_runs(splits_file: Path, case_ids: Sequence[str], counts: Sequence[int], seeds: Sequence[int],
              num_test: int, split_seed: int = 0) -> Tuple[List[LowLabelRun], List[str]]:
    """One run per distinct training subset of each (count, seed), registered as folds; returns
    the runs and the held-out cases. Seeds that draw a subset an earlier seed has (all of them at
    fraction 1.0) share its fold, which is trained once and so counts once."""
    test = held_out_cases(list(case_ids), num_test, split_seed)
    pool = [case for case in sorted(case_ids) if case not in test]
    subsets = {seed: training_subsets(pool, counts, seed) for seed in seeds}
    keys = [(count, seed) for count in counts for seed in seeds]
    folds = register_folds(splits_file, case_ids, [{"train": subsets[s][c], "val": test} for c, s in keys])
    runs, planned = [], set()
    for (count, seed), fold in zip(keys, folds):
        if fold not in planned:
            planned.add(fold)
            runs.append(LowLabelRun(count, seed, fold, tuple(subsets[seed][count])))
    return runs, test


def read_validation(fold_folder: Path) -> Optional[dict]:
    """nnU-Net's validation summary of a finished fold: mean foreground Dice and Dice per label."""
    summary_file = fold_folder / "validation" / "summary.json"
    if not summary_file.is_file():
        return None
    summary = json.loads(summary_file.read_text())
    return {"mean": summary["foreground_mean"]["Dice"],
            "per_label": {label: metrics["Dice"] for label, metrics in summary["mean"].items()}}


@dataclass
class LowLabelExperiment:
    """What to fine-tune, from which weights, and with which budget (same for both arms)."""
    dataset: str  # nnU-Net dataset name
    configuration: str
    plans: str
    pretrained_weights: Path
    trainer: str = "nnUNetTrainerMASSFinetune"
    baseline_trainer: str = ""  # default: `<trainer>_scratch`, the same recipe from random weights
    device: str = "cuda"
    budget: Mapping[str, str] = ()  # nnUNet_MASS_* variables, e.g. epochs and iterations

    def __post_init__(self):
        self.baseline_trainer = self.baseline_trainer or f"{self.trainer}_scratch"

    def trainer_of(self, arm: str) -> str:
        return self.trainer if arm == PRETRAINED else self.baseline_trainer

    def fold_folder(self, results_root: Path, arm: str, fold: int) -> Path:
        return (Path(results_root) / self.dataset / f"{self.trainer_of(arm)}__{self.plans}__{self.configuration}"
                / f"fold_{fold}")

    def output_folder(self, results_root: Path) -> Path:
        return Path(results_root) / self.dataset / f"mass_lowlabel__{self.trainer}__{self.plans}__{self.configuration}"


def train_arm(experiment: LowLabelExperiment, run: LowLabelRun, arm: str, env: Mapping[str, str],
              log_file: Path) -> dict:
    """Train (or resume) one arm of one run through stock nnUNetv2_train; its validation scores."""
    from nnunet_mass.stock import run_stock

    folder = experiment.fold_folder(env["nnUNet_results"], arm, run.fold)
    finished = read_validation(folder)
    if finished is not None:
        return finished
    args = [experiment.dataset, experiment.configuration, run.fold, "-tr", experiment.trainer_of(arm),
            "-p", experiment.plans, "-device", experiment.device]
    if any((folder / name).is_file() for name in ("checkpoint_final.pth", "checkpoint_latest.pth")):
        args.append("--c")  # nnU-Net refuses --c together with -pretrained_weights; the checkpoint has them
    elif arm == PRETRAINED:
        args += ["-pretrained_weights", experiment.pretrained_weights]
    run_stock("nnUNetv2_train", args, env, log_file)
    return read_validation(folder)


def run_experiment(experiment: LowLabelExperiment, runs: Sequence[LowLabelRun], env: Mapping[str, str],
                   progress=print) -> List[dict]:
    """Both arms of every run, pretrained first so that weights that do not fit fail before any
    baseline is trained; returns one result per arm and run."""
    env = {**env, **dict(experiment.budget)}
    if experiment.device == "cpu":
        env.setdefault("nnUNet_n_proc_DA", "0")  # workers cost more than they save on small CPU runs
    output = experiment.output_folder(env["nnUNet_results"])
    output.mkdir(parents=True, exist_ok=True)
    results = []
    for run in runs:
        for arm in (PRETRAINED, SCRATCH):
            progress(f"{arm}: {run.num_cases} labeled case(s), seed {run.seed} (fold {run.fold})")
            scores = train_arm(experiment, run, arm, env, output / "commands.log")
            results.append({"arm": arm, "num_cases": run.num_cases, "seed": run.seed, "fold": run.fold,
                            "train": list(run.train), **scores})
    return results


def check_weights_fit(experiment: LowLabelExperiment, preprocessed: Path) -> None:
    """Refuse, before any training, weights that are unreadable or whose encoder does not fit the plans' network."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_mass.networks.backbone import build_plans_backbone
    from nnunet_mass.training.transfer import (TRANSFER_PARTS, IncompatibleWeightsError, dimensionality_problem,
                                               read_network_weights, transfer_problems)

    pretrained = read_network_weights(str(experiment.pretrained_weights))
    plans = PlansManager(str(preprocessed / f"{experiment.plans}.json"))
    configuration = plans.get_configuration(experiment.configuration)
    dataset_json = load_json(str(preprocessed / "dataset.json"))
    # only encoder keys are checked, so the class count (the segmentation layers) does not matter
    target = build_plans_backbone(plans, configuration, len(dataset_json["channel_names"])).state_dict()
    problem = dimensionality_problem(target, pretrained)
    problems = [problem] if problem else transfer_problems(target, pretrained, TRANSFER_PARTS["encoder"])
    if problems:
        raise IncompatibleWeightsError(
            f"{experiment.pretrained_weights} does not fit the {experiment.plans} {experiment.configuration} network "
            f"of {experiment.dataset}:\n  " + "\n  ".join(problems[:10]) +
            "\nGive this dataset the pretraining plans (nnUNetv2_move_plans_between_datasets), preprocess, and pass "
            "them with -p.")


def check_trainers(experiment: LowLabelExperiment) -> None:
    """Both arms' trainers must exist where nnUNetv2_train looks for them."""
    import contextlib
    import io

    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    for arm in (PRETRAINED, SCRATCH):
        name = experiment.trainer_of(arm)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the search narrates every folder it visits
                recursive_find_trainer_class_by_name(name)
        except RuntimeError:
            hint = " (the baseline defaults to <trainer>_scratch; name another with -tr_baseline)" \
                if arm == SCRATCH else ""
            raise ValueError(f"nnUNetv2_train cannot find the trainer {name}{hint}") from None


def preprocessed_cases(preprocessed: Path, experiment: LowLabelExperiment) -> List[str]:
    """The dataset's preprocessed case ids for the experiment's plans and configuration."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_file = preprocessed / f"{experiment.plans}.json"
    if not plans_file.is_file():
        raise FileNotFoundError(f"{plans_file} does not exist: plan {experiment.dataset} (or give it the pretraining "
                                "plans with nnUNetv2_move_plans_between_datasets) and pass the plans with -p")
    identifier = PlansManager(str(plans_file)).get_configuration(experiment.configuration).data_identifier
    data = preprocessed / identifier
    if not data.is_dir():
        raise FileNotFoundError(f"{data} does not exist: preprocess with nnUNetv2_preprocess -d <id> "
                                f"-plans_name {experiment.plans} -c {experiment.configuration}")
    return sorted(infer_dataset_class(str(data)).get_identifiers(str(data)))


def low_label_study(experiment: LowLabelExperiment, env: Mapping[str, str], seeds: Sequence[int],
                    num_cases: Sequence[int] = (), fractions: Sequence[float] = (), num_test: Optional[int] = None,
                    split_seed: int = 0, progress=print) -> dict:
    """Check everything, plan the runs, train both arms, and write results.json and the plot
    beside the runs; returns the results with the aggregated table."""
    preprocessed = Path(env["nnUNet_preprocessed"]) / experiment.dataset
    cases = preprocessed_cases(preprocessed, experiment)
    check_weights_fit(experiment, preprocessed)
    check_trainers(experiment)
    num_test = num_test or max(1, round(0.25 * len(cases)))
    counts = sorted(set(num_cases) | set(cases_from_fractions(fractions, len(cases) - num_test)))
    if not counts or not seeds:
        raise ValueError("give at least one labeled-case count (--cases or --fractions) and one seed")
    runs, test = plan_runs(preprocessed / "splits_final.json", cases, counts, seeds, num_test, split_seed)
    progress(f"{len(test)} held-out cases: {', '.join(test)}; {len(runs)} runs x 2 arms "
             f"(folds {', '.join(str(f) for f in sorted(run.fold for run in runs))} of splits_final.json)")
    results = run_experiment(experiment, runs, env, progress)
    table = aggregate(results)
    output = experiment.output_folder(env["nnUNet_results"])
    report = {"dataset": experiment.dataset, "configuration": experiment.configuration, "plans": experiment.plans,
              "trainer": experiment.trainer, "baseline_trainer": experiment.baseline_trainer,
              "pretrained_weights": str(experiment.pretrained_weights), "budget": dict(experiment.budget),
              "held_out_cases": test, "runs": results, "table": table}
    (output / "results.json").write_text(json.dumps(report, indent=1))
    plot(table, output / "dice_vs_labeled_cases.png")
    return report
