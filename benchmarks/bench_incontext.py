"""Few-shot in-context Dice of a MASS pretraining on new phantoms, with 1 and 3 references.

    python benchmarks/bench_incontext.py -m <pretraining model folder> --workdir /tmp/bench_incontext

Writes a labeled CT phantom dataset (a seed the pretraining did not use; shape and spacing
default to the plans' median image size and spacing), then scores nnUNetv2_mass_evaluate_incontext's
protocol on it: per label, k seeded reference cases among those containing it, every other
case segmented and scored with nnU-Net's Dice. The same is done with a randomly initialised
network on the same plans (no pretraining) as the floor. Prints one table, writes
<workdir>/bench_incontext.json.
"""
import argparse
import json
import time
from pathlib import Path

DATASET_ID, DATASET_NAME = 199, "InContextBench"


def phantom_dataset(workdir: Path, model, cases: int, seed: int, shape, spacing) -> Path:
    from nnunet_mass.phantoms import write_phantom_dataset

    shape = shape or [int(s) for s in model.configuration_manager.median_image_size_in_voxels]
    spacing = spacing or list(model.configuration_manager.spacing)
    return write_phantom_dataset(workdir / "nnUNet_raw", DATASET_ID, DATASET_NAME, num_cases=cases, seed=seed,
                                 shape=shape, spacing=spacing, overwrite=True)


def run(name: str, model, raw_folder: Path, workdir: Path, args) -> dict:
    from nnunet_mass.downstream.evaluate_incontext import evaluate_model

    start = time.perf_counter()
    summary = evaluate_model(model, raw_folder, args.k, args.eval_seed, workdir / name, device=args.device,
                             tile_step_size=args.step_size, verbose=False)
    summary["seconds"] = round(time.perf_counter() - start, 1)
    return summary


def table(results: dict) -> str:
    columns = [(name, k) for name, summary in results.items() for k in summary["k"]]
    first = next(iter(results.values()))["k"]
    labels = next(iter(first.values()))["per_label"]
    lines = [f"{'label':<20}" + "".join(f"{f'{name} k={k}':>16}" for name, k in columns)]
    for label, entry in labels.items():
        cells = [results[name]["k"][k]["per_label"][label]["Dice"] for name, k in columns]
        lines.append(f"{entry['name'] + ' (' + label + ')':<20}" + "".join(_cell(c) for c in cells))
    lines.append(f"{'mean':<20}" + "".join(_cell(results[name]["k"][k]["mean_dice"]) for name, k in columns))
    return "\n".join(lines)


def _cell(value) -> str:
    return f"{'-':>16}" if value is None else f"{value:>16.3f}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", dest="model_folder", type=Path, required=True, help="MASS pretraining model folder")
    parser.add_argument("-f", dest="fold", default=None, help="fold [the only one, or all]")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_incontext"))
    parser.add_argument("--cases", type=int, default=8, help="phantom cases (references and queries) [8]")
    parser.add_argument("--seed", type=int, default=101, help="phantom seed; differ from the pretraining's [101]")
    parser.add_argument("--eval_seed", type=int, default=0, help="seed of the reference draw [0]")
    parser.add_argument("--shape", type=int, nargs=3, default=None, help="(z, y, x) voxels [plans' median size]")
    parser.add_argument("--spacing", type=float, nargs=3, default=None, help="(z, y, x) mm [plans' spacing]")
    parser.add_argument("-k", type=int, nargs="+", default=[1, 3], help="references per label [1 3]")
    parser.add_argument("--step_size", type=float, default=0.5, help="sliding-window step [0.5]")
    parser.add_argument("-device", dest="device", default="cpu", help="cpu or cuda [cpu]")
    parser.add_argument("--no_floor", action="store_true", help="skip the randomly initialised network")
    args = parser.parse_args(argv)

    import torch

    from nnunet_mass.downstream.incontext import untrained_copy
    from nnunet_mass.downstream.model import load_pretrained_model

    args.device = torch.device(args.device)
    model = load_pretrained_model(args.model_folder, args.fold, device=args.device)
    raw_folder = phantom_dataset(args.workdir, model, args.cases, args.seed, args.shape, args.spacing)
    results = {"pretrained": run("pretrained", model, raw_folder, args.workdir, args)}
    if not args.no_floor:
        results["random init"] = run("random_init", untrained_copy(model), raw_folder, args.workdir, args)
    report = {"model": str(model.checkpoint), "pretraining": model.metadata, "phantom_seed": args.seed,
              "cases": args.cases, "results": results}
    (args.workdir / "bench_incontext.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"in-context Dice on {args.cases} new phantoms ({raw_folder.name}, seed {args.seed}); "
          + ", ".join(f"{name}: {summary['seconds']} s" for name, summary in results.items()))
    print(table(results))


if __name__ == "__main__":
    main()
