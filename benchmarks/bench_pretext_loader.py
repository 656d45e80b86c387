"""Throughput of one MASSPretextDataLoader process: pretext samples per second.

    python benchmarks/bench_pretext_loader.py                       # both default settings
    python benchmarks/bench_pretext_loader.py --shape 160 160 160 --patch 128 128 128

For each setting: one CT phantom (normalised the way nnU-Net's CTNormalization would), saved
as an nnU-Net blosc2 case chunked for the patch, classical mask proposals saved beside it
(`nnunet_mass.masks.classical`), then `generate_train_batch` timed over --batches batches
after two warm-up batches, single-threaded as in an nnU-Net augmenter worker.
"""
import os

for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import pickle  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

NOMINAL_SHAPE, NOMINAL_SPACING = (64, 64, 64), (2.5, 2.0, 2.0)
DEFAULT_SETTINGS = [((64, 64, 64), (32, 32, 32)), ((160, 160, 160), (128, 128, 128))]


def make_case(folder: Path, shape, patch, seed: int) -> dict:
    """An nnU-Net-style data folder with one CT phantom and its classical masks."""
    import blosc2
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2

    from nnunet_mass.masks.classical import propose_masks
    from nnunet_mass.masks.store import mask_folder, save_mask_stack
    from nnunet_mass.phantoms import make_phantom

    spacing = tuple(s * n / m for s, n, m in zip(NOMINAL_SPACING, NOMINAL_SHAPE, shape))
    image, labels = make_phantom(np.random.default_rng(seed), "CT", shape, spacing)
    values = np.clip(image[labels > 0], *np.percentile(image[labels > 0], (0.5, 99.5)))
    low, high = values.min(), values.max()
    data = ((np.clip(image, low, high) - values.mean()) / values.std()).astype(np.float32)[None]  # (1, z, y, x)
    data_folder = folder / "nnUNetPlans_3d_fullres"
    data_folder.mkdir(parents=True)
    blocks, chunks = comp_blosc2_params(data.shape, patch)
    blosc2.set_nthreads(1)
    nnUNetDatasetBlosc2.save_case(data, labels[None].astype(np.int8), {"class_locations": {}},
                                  str(data_folder / "case_000"), chunks=chunks, blocks=blocks)
    start = time.perf_counter()
    stack = propose_masks(data, spacing)
    seconds = time.perf_counter() - start
    masks = mask_folder(folder, "nnUNetPlans_3d_fullres")
    save_mask_stack(masks, "case_000", stack, {"data_shape": list(data.shape)}, patch_size=patch)
    return {"data": data_folder, "masks": masks, "num_masks": len(stack), "num_layers": stack.layers.shape[0],
            "generator_s": seconds}


def make_loader(case: dict, patch, batch_size: int):
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    from nnunet_mass.pretext.dataloader import MASSPretextDataLoader

    label_manager = LabelManager({"background": 0, "body": 1}, regions_class_order=None)
    data = nnUNetDatasetBlosc2(str(case["data"]))
    loader = MASSPretextDataLoader(data, batch_size, patch, label_manager, case["masks"], seed=0)
    return pickle.loads(pickle.dumps(loader))  # as a worker receives it


def time_loader(loader, batches: int) -> float:
    """Samples per second of `generate_train_batch` after two warm-up batches."""
    for _ in range(2):
        loader.generate_train_batch()
    start = time.perf_counter()
    for _ in range(batches):
        loader.generate_train_batch()
    return batches * loader.batch_size / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), help="phantom size (default: both "
                        "settings, 64^3 with a 32^3 patch and 160^3 with a 128^3 patch)")
    parser.add_argument("--patch", type=int, nargs=3, metavar=("Z", "Y", "X"))
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    settings = [(tuple(args.shape), tuple(args.patch))] if args.shape and args.patch else DEFAULT_SETTINGS
    for shape, patch in settings:
        with tempfile.TemporaryDirectory(prefix="bench_pretext_") as folder:
            case = make_case(Path(folder), shape, patch, args.seed)
            rate = time_loader(make_loader(case, patch, args.batch_size), args.batches)
            print(f"phantom {shape}, patch {patch}: {case['num_masks']} classical masks in {case['num_layers']} "
                  f"layers (made in {case['generator_s']:.0f} s); {rate:.2f} samples/s "
                  f"({1 / rate:.3f} s per sample, batch {args.batch_size}, {args.batches} batches, 1 thread)")


if __name__ == "__main__":
    main()
