"""Does MASS pretraining give better frozen features than a random network? Lesion presence on CT phantoms.

    python benchmarks/bench_linear_probe.py -m <pretraining model folder> --workdir /tmp/bench_probe \\
        --cases 40 --lesion_scale 2.5 --seeds 5 --threads 1

Steps: write `--cases` CT phantoms (half with their liver lesions, half with the lesion voxels
painted as liver; same anatomy draws otherwise, see nnunet_mass/phantoms/classification.py),
extract features through the same code as nnUNetv2_mass_extract_features with (a) the
pretrained encoder and (b) a randomly initialised network of the same plans, then run
stratified k-fold cross-validation of the probes for every seed: the seed shuffles the folds,
initialises the attention head and, for (b), the random network. Printed: AUROC and balanced
accuracy, mean ± std over seeds of the cross-validated means. For scale, a reference row
fits the same logistic probe on each image's HU histogram (-200..300 HU, 50 bins, log):
what a hand-made global intensity statistic gets with no encoder at all.
"""
import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

PROBES = {"logistic/deepest": ("logistic", "deepest"), "logistic/all": ("logistic", "all"),
          "attention/tokens": ("attention", "deepest")}


def random_model(pretrained, seed: int):
    """The pretrained model's plans and data handling with a freshly initialised network."""
    import torch

    from nnunet_mass.networks.incontext import build_incontext_network

    torch.manual_seed(seed)
    network = build_incontext_network(pretrained.plans_manager, pretrained.configuration_manager,
                                      pretrained.num_input_channels).eval()
    return dataclasses.replace(pretrained, network=network, checkpoint=None, folder=Path(f"random-init-{seed}"))


def features_by_stages(model, cases: dict, want_tokens: bool) -> dict:
    """{"deepest": CaseFeatures (with tokens when wanted), "all": CaseFeatures}."""
    from nnunet_mass.downstream.features import PoolingSettings, extract_features

    return {stages: extract_features(model, cases, PoolingSettings(stages, tokens=want_tokens and stages == "deepest"),
                                     progress=False) for stages in ("deepest", "all")}


def score(features: dict, labels: dict, probe: str, folds: int, seed: int) -> dict:
    from nnunet_mass.downstream import probe as probes

    kind, stages = PROBES[probe]
    chosen = features[stages]
    rows, names = probes.labelled_cases(chosen, labels, "labels", "features")
    y = np.array([int(n) for n in names])
    report = probes.cross_validate(kind, probes.take(probes.head_inputs(kind, chosen, "features"), rows), y, folds,
                                   seed)
    return {metric: report[metric]["mean"] for metric in ("auroc", "balanced_accuracy")}


def histogram_features(cases: dict, labels: dict):
    """(log HU histograms (cases, 50), labels as ints) of the raw images, in `labels` order."""
    import SimpleITK as sitk

    rows = []
    for case in labels:
        image = sitk.GetArrayFromImage(sitk.ReadImage(cases[case][0]))
        counts, _ = np.histogram(image, bins=50, range=(-200, 300))
        rows.append(np.log(counts / image.size + 1e-6))
    return np.stack(rows), np.array([int(v) for v in labels.values()])


def histogram_reference(cases: dict, labels: dict, folds: int, seeds: int) -> list:
    from nnunet_mass.downstream.probe import cross_validate

    x, y = histogram_features(cases, labels)
    reports = [cross_validate("logistic", x, y, folds, seed) for seed in range(seeds)]
    return [{metric: r[metric]["mean"] for metric in ("auroc", "balanced_accuracy")} for r in reports]


def summarise(runs: list) -> dict:
    return {metric: {"mean": float(np.mean([r[metric] for r in runs])), "std": float(np.std([r[metric] for r in runs])),
                     "per_seed": [round(r[metric], 3) for r in runs]} for metric in runs[0]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", dest="model_folder", required=True, help="MASS pretraining model folder")
    parser.add_argument("-f", dest="fold", default=None)
    parser.add_argument("-chk", dest="checkpoint", default="checkpoint_final.pth")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=40)
    parser.add_argument("--lesion_scale", type=float, default=2.5,
                        help="lesion radius factor: 1 ~1-2 ml, 1.5 ~4-7 ml, 2.5 ~18-25 ml (of a ~70 ml liver) [2.5]")
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 64, 64))
    parser.add_argument("--spacing", type=float, nargs=3, default=(2.5, 2.0, 2.0))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--probes", nargs="+", choices=sorted(PROBES), default=list(PROBES))
    parser.add_argument("--data_seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads [1]")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    report = run(args)
    report["minutes"] = round((time.perf_counter() - start) / 60, 1)
    (args.workdir / "linear_probe.json").write_text(json.dumps(report, indent=1))
    print_table(report)


def run(args) -> dict:
    from nnunet_mass.downstream.features import find_cases
    from nnunet_mass.downstream.model import load_pretrained_model
    from nnunet_mass.phantoms.classification import write_lesion_classification_set

    labels = write_lesion_classification_set(args.workdir / "data", args.cases, args.data_seed, args.lesion_scale,
                                             args.shape, args.spacing)
    labels = {case: str(label) for case, label in labels.items()}
    pretrained = load_pretrained_model(args.model_folder, args.fold, args.checkpoint)
    cases = find_cases(args.workdir / "data" / "images", pretrained.dataset_json["file_ending"], 1)
    cases = {case: cases[case] for case in labels}  # a reused workdir may hold more images
    want_tokens = "attention/tokens" in args.probes
    results = {"pretrained": {p: [] for p in args.probes}, "random_init": {p: [] for p in args.probes}}
    pretrained_features = features_by_stages(pretrained, cases, want_tokens)
    for seed in range(args.seeds):
        random_features = features_by_stages(random_model(pretrained, seed), cases, want_tokens)
        for name, features in (("pretrained", pretrained_features), ("random_init", random_features)):
            for probe in args.probes:
                results[name][probe].append(score(features, labels, probe, args.folds, seed))
    summary = {name: {p: summarise(runs) for p, runs in by_probe.items()} for name, by_probe in results.items()}
    summary["reference"] = {"logistic/HU-hist": summarise(histogram_reference(cases, labels, args.folds, args.seeds))}
    return {"model": str(args.model_folder), "checkpoint": str(pretrained.checkpoint), "cases": args.cases,
            "lesion_scale": args.lesion_scale, "folds": args.folds, "seeds": args.seeds, "results": summary}


def print_table(report: dict) -> None:
    print(f"\n{report['cases']} CT phantoms, lesion scale {report['lesion_scale']}, {report['folds']}-fold CV, "
          f"mean ± std over {report['seeds']} seeds ({report['minutes']} min)")
    print(f"  {'probe':<18} {'features':<12} {'AUROC':>15} {'balanced acc.':>15}")
    for name, by_probe in report["results"].items():
        for probe, metrics in by_probe.items():
            auroc, accuracy = metrics["auroc"], metrics["balanced_accuracy"]
            print(f"  {probe:<18} {name:<12} {auroc['mean']:8.3f} ± {auroc['std']:.3f} "
                  f"{accuracy['mean']:8.3f} ± {accuracy['std']:.3f}")


if __name__ == "__main__":
    main()
