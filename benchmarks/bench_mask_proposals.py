"""Benchmark the classical mask proposals on synthetic phantoms: count, time, memory, quality.

    python benchmarks/bench_mask_proposals.py --cases 5 --shape 64 64 64 --modality CT

Each phantom is normalised the way nnU-Net would (CT: clip to the foreground's 0.5/99.5
percentiles, then z-score with the foreground mean/std; MR: z-score over the image), with
the labels (or the body) standing in for nnU-Net's foreground. The spacing defaults to the
phantom's nominal 64^3 field of view at the requested shape, so larger shapes are finer
grids of the same anatomy. Quality is reported per connected ground-truth structure
(instances; a label such as "vertebrae" holds several) and per whole label value.
Runs single-threaded: the thread variables are set before numpy is imported.
"""
import os

for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402

import numpy as np  # noqa: E402

from nnunet_mass.masks.classical import add_settings_arguments, propose_masks, settings_from_args  # noqa: E402
from nnunet_mass.masks.quality import summarize_quality  # noqa: E402

NOMINAL_SHAPE, NOMINAL_SPACING = (64, 64, 64), (2.5, 2.0, 2.0)


def normalise(image: np.ndarray, foreground: np.ndarray, modality: str) -> np.ndarray:
    """nnU-Net-like normalisation: CTNormalization for CT, ZScoreNormalization otherwise."""
    if modality == "CT":
        values = image[foreground]
        low, high = np.percentile(values, (0.5, 99.5))
        values = np.clip(values, low, high)
        image = np.clip(image, low, high)
        return ((image - values.mean()) / max(values.std(), 1e-8)).astype(np.float32)
    return ((image - image.mean()) / max(image.std(), 1e-8)).astype(np.float32)


def run_case(index: int, args, settings) -> dict:
    from nnunet_mass.phantoms import PHANTOM_LABELS, make_phantom

    rng = np.random.default_rng([args.seed, index])
    image, labels = make_phantom(rng, args.modality, tuple(args.shape), tuple(args.spacing))
    foreground = labels > 0 if args.foreground == "labels" else image > np.percentile(image, 50)
    data = normalise(image, foreground, args.modality)[None]  # (C=1, z, y, x)

    tracemalloc.start()
    start = time.process_time(), time.perf_counter()
    stack = propose_masks(data, args.spacing, settings)
    cpu, wall = time.process_time() - start[0], time.perf_counter() - start[1]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    voxel_ml = float(np.prod(args.spacing)) / 1000
    min_voxels = max(settings.min_voxels, int(np.ceil(settings.min_size_ml / voxel_ml)))
    names = {v: k for k, v in PHANTOM_LABELS.items()}
    instances = summarize_quality(labels, stack, instances=True, min_voxels=min_voxels)
    whole = summarize_quality(labels, stack, instances=False)
    sources = {}
    for info in stack.masks:
        family = info.source.split("_")[0]
        sources[family] = sources.get(family, 0) + 1
    return {"case": index, "count": len(stack), "cpu_s": cpu, "wall_s": wall, "peak_mb": peak / 2**20,
            "instances": instances, "whole": whole, "names": names, "sources": sources}


def print_case(result: dict) -> None:
    inst, whole, names = result["instances"], result["whole"], result["names"]
    print(f"case {result['case']}: {result['count']} proposals {result['sources']}, cpu {result['cpu_s']:.1f} s, "
          f"wall {result['wall_s']:.1f} s, numpy peak {result['peak_mb']:.0f} MB")
    print(f"  {'label':10s} {'n':>3s} {'ABO':>6s} {'R@.5':>6s} | whole label: {'IoU':>6s}")
    for value, row in inst["per_label"].items():
        print(f"  {names.get(value, value):10s} {row['count']:3d} {row['abo']:6.3f} {row['recall']:6.3f} |"
              f"              {whole['best'].get(value, 0.0):6.3f}")
    o = inst["overall"]
    print(f"  {'overall':10s} {o['count']:3d} {o['abo']:6.3f} {o['recall']:6.3f} | label mean ABO "
          f"{inst['label_mean']['abo']:.3f} R@.5 {inst['label_mean']['recall']:.3f}; whole labels ABO "
          f"{whole['overall']['abo']:.3f} R@.5 {whole['overall']['recall']:.3f}")


def print_mean(results: list) -> None:
    def mean(get):
        return float(np.mean([get(r) for r in results]))

    print(f"mean over {len(results)} cases: {mean(lambda r: r['count']):.0f} proposals "
          f"(min {min(r['count'] for r in results)}, max {max(r['count'] for r in results)}), "
          f"cpu {mean(lambda r: r['cpu_s']):.1f} s (max {max(r['cpu_s'] for r in results):.1f}), "
          f"numpy peak {mean(lambda r: r['peak_mb']):.0f} MB")
    per_label = {}
    for r in results:
        for value, row in r["instances"]["per_label"].items():
            per_label.setdefault(value, []).append(row)
    names = results[0]["names"]
    label_means = []
    for value, rows in sorted(per_label.items()):
        label_means.append((np.mean([x["abo"] for x in rows]), np.mean([x["recall"] for x in rows])))
        print(f"  {names.get(value, value):10s} ABO {label_means[-1][0]:.3f} R@.5 {label_means[-1][1]:.3f}")
    print(f"  label mean ABO {np.mean([m[0] for m in label_means]):.3f} "
          f"R@.5 {np.mean([m[1] for m in label_means]):.3f}   (each label weighted equally)")
    print(f"  overall    ABO {mean(lambda r: r['instances']['overall']['abo']):.3f} "
          f"R@.5 {mean(lambda r: r['instances']['overall']['recall']):.3f}   (whole labels: ABO "
          f"{mean(lambda r: r['whole']['overall']['abo']):.3f} R@.5 "
          f"{mean(lambda r: r['whole']['overall']['recall']):.3f})")
    print(f"process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=5)
    parser.add_argument("--shape", type=int, nargs=3, default=NOMINAL_SHAPE, metavar=("Z", "Y", "X"))
    parser.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("Z", "Y", "X"),
                        help="mm; default: the nominal 64^3 field of view divided by the shape")
    parser.add_argument("--modality", choices=["CT", "MR"], default="CT")
    parser.add_argument("--foreground", choices=["labels", "bright"], default="labels",
                        help="voxels standing in for nnU-Net's foreground in the CT normalisation")
    parser.add_argument("--seed", type=int, default=0)
    add_settings_arguments(parser)
    args = parser.parse_args(argv)
    if args.spacing is None:
        args.spacing = [s * n / m for s, n, m in zip(NOMINAL_SPACING, NOMINAL_SHAPE, args.shape)]
    settings = settings_from_args(args)
    print(f"{args.modality} {tuple(args.shape)} at {tuple(round(s, 3) for s in args.spacing)} mm, "
          f"{args.cases} cases, seed {args.seed}")
    results = []
    for index in range(args.cases):
        results.append(run_case(index, args, settings))
        print_case(results[-1])
    print_mean(results)


if __name__ == "__main__":
    main()
