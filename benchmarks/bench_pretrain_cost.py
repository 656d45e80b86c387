"""Cost of MASS pretraining against stock nnU-Net training on the same plans and batch size.

    python benchmarks/bench_pretrain_cost.py --workdir /tmp/bench_cost               # cpu_tiny preset
    python benchmarks/bench_pretrain_cost.py --workdir /tmp/bench_cost --plans nnUNetPlans
    python benchmarks/bench_pretrain_cost.py --preset plans/pretrain_iso1.5mm.json --iterations 5

What it measures, in one process:
- a CT phantom dataset (default 6 cases of 64^3 voxels) is written, planned with nnU-Net's
  default planner, optionally derived into a plans preset, preprocessed, and given classical
  mask proposals; with --workdir an existing one is reused;
- a stock `nnUNetTrainer` and a `nnUNetTrainerMASSPretrain` are built on those plans (fold 0,
  3d_fullres) and their dataloaders set up in the main process (nnUNet_n_proc_DA=0);
- loader throughput: `next(dataloader_train)` timed per batch with one torch thread, as in an
  nnU-Net augmenter worker; samples/s over all batches but the first (a mean, not a median:
  nnU-Net's random augmentations make a few batches much slower); those batches are kept;
- step time: `train_step(batch)` on the kept batches (so data loading is excluded), after
  warm-up steps, in alternating blocks (stock, MASS, stock, ...) so both share the machine's
  noise; medians are reported;
- with CUDA (unless left out of --devices) the same on the GPU: stock with its fp16 AMP, MASS
  with its bf16 autocast, and a peak memory per trainer = the bytes its step allocated above
  what was resident when its block started, plus its own resident state (weights, gradients,
  optimiser state, EMA), since both trainers live on the GPU at once.
On a shared machine the fastest step is printed too: the least disturbed figure.

The loader processes needed = ceil(samples/s the step consumes / samples/s one loader
process makes); nnU-Net's default number of processes is get_allowed_n_proc_DA() with
nnUNet_n_proc_DA unset (a per-host table, capped at the CPU count).
"""
import argparse
import contextlib
import json
import math
import os
import statistics
import time
from pathlib import Path

import torch

DATASET_ID, DATASET_NAME = 987, "BenchPretrainCost"
STOCK, MASS = "nnUNetTrainer", "nnUNetTrainerMASSPretrain"
CONFIGURATION = "3d_fullres"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_pretrain_cost"),
                        help="holds nnUNet_raw/_preprocessed/_results; reused when the dataset is there")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--preset", default="cpu_tiny", help="plans preset name or JSON path (default cpu_tiny)")
    which.add_argument("--plans", help="use these plans as planned by nnU-Net instead of a preset, e.g. nnUNetPlans")
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 64, 64))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=20, help="timed train steps per trainer")
    parser.add_argument("--warmup", type=int, default=3, help="untimed train steps per trainer first")
    parser.add_argument("--block", type=int, default=5, help="steps per block when alternating trainers")
    parser.add_argument("--loader-batches", type=int, default=20,
                        help="batches timed from each loader, and cycled through by the train steps")
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"], choices=["cpu", "cuda"],
                        help="cuda is skipped when no GPU is available")
    parser.add_argument("--threads", type=int, help="torch CPU threads for the train steps (default: torch's)")
    parser.add_argument("--log", type=Path, help="where nnU-Net's own output goes (default workdir/bench_log.txt)")
    return parser.parse_args()


def set_nnunet_folders(workdir: Path) -> None:
    """Point nnU-Net at `workdir` before anything imports nnunetv2.paths."""
    from nnunet_mass.stock import nnunet_folders

    os.environ.update(nnunet_folders(workdir))
    os.environ["nnUNet_compile"] = "false"


@contextlib.contextmanager
def environment(**values):
    """Set (str) or unset (None) environment variables for a while."""
    saved = {name: os.environ.get(name) for name in values}
    _apply(values)
    try:
        yield
    finally:
        _apply(saved)


def _apply(values: dict) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def dataset_folder(kind: str) -> Path:
    return Path(os.environ[kind]) / f"Dataset{DATASET_ID:03d}_{DATASET_NAME}"


def data_identifier(plans_identifier: str) -> str:
    plans = json.loads((dataset_folder("nnUNet_preprocessed") / f"{plans_identifier}.json").read_text())
    return plans["configurations"][CONFIGURATION]["data_identifier"]


def is_preprocessed(plans_identifier: str, cases: int) -> bool:
    if not (dataset_folder("nnUNet_preprocessed") / f"{plans_identifier}.json").is_file():
        return False
    folder = dataset_folder("nnUNet_preprocessed") / data_identifier(plans_identifier)
    return folder.is_dir() and len(list(folder.glob("*.pkl"))) >= cases


def build_dataset(args) -> str:
    """Phantoms planned, preprocessed and masked for the chosen plans; returns the plans identifier."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments, preprocess

    from nnunet_mass.masks.dataset_masks import generate_dataset_masks
    from nnunet_mass.phantoms import write_phantom_dataset
    from nnunet_mass.plans_presets import load_preset, write_preset_plans

    if not dataset_folder("nnUNet_raw").is_dir():
        write_phantom_dataset(os.environ["nnUNet_raw"], DATASET_ID, DATASET_NAME, num_cases=args.cases,
                              seed=args.seed, modality="CT", shape=tuple(args.shape))
    if not is_preprocessed("nnUNetPlans", args.cases):
        extract_fingerprints([DATASET_ID], num_processes=1)
        plan_experiments([DATASET_ID])
        preprocess([DATASET_ID], configurations=(CONFIGURATION,), num_processes=(1,))
    plans_identifier = args.plans or load_preset(args.preset)["plans_name"]
    if args.plans is None:
        write_preset_plans(dataset_folder("nnUNet_preprocessed"), args.preset)
    if not is_preprocessed(plans_identifier, args.cases):
        preprocess([DATASET_ID], plans_identifier=plans_identifier, configurations=(CONFIGURATION,),
                   num_processes=(1,))
    generate_dataset_masks(DATASET_ID, CONFIGURATION, plans_identifier, num_processes=1)  # skips what exists
    return plans_identifier


def make_trainer(name: str, plans_identifier: str, device: torch.device):
    from nnunetv2.run.run_training import get_trainer_from_args

    trainer = get_trainer_from_args(str(DATASET_ID), CONFIGURATION, 0, name, plans_identifier, device=device)
    trainer.on_train_start()  # initialize(), dataloaders, output folder
    return trainer


def fetch_batches(trainer, count: int):
    """`count` batches from the trainer's loader, and the seconds each took, with one torch thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    batches, seconds = [], []
    try:
        for _ in range(count):
            start = time.perf_counter()
            batches.append(next(trainer.dataloader_train))
            seconds.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return batches, seconds


def loader_seconds_per_batch(seconds: list) -> float:
    """Mean seconds per batch after the first: throughput counts the slow augmentations too."""
    timed = seconds[1:] or seconds
    return sum(timed) / len(timed)


def resident_bytes(trainer) -> int:
    """Weights, gradients, optimiser state and EMA of one trainer on its device."""
    tensors = list(trainer.network.parameters())
    tensors += [p.grad for p in trainer.network.parameters() if p.grad is not None]
    tensors += [v for state in trainer.optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    if getattr(trainer, "ema", None) is not None:
        tensors += list(trainer.ema.module.parameters()) + list(trainer.ema.module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors if t.device.type != "cpu")


def run_block(trainer, batches, steps: int, start_index: int, device: torch.device):
    """Seconds of `steps` train steps; with CUDA also the peak bytes allocated above the block's start."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    seconds = []
    for i in range(steps):
        batch = batches[(start_index + i) % len(batches)]
        start = time.perf_counter()
        trainer.train_step(batch)
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    extra = torch.cuda.max_memory_allocated() - base if cuda else 0
    return seconds, extra


def time_steps(trainers: dict, batches: dict, args, device: torch.device) -> dict:
    """Alternating blocks of train steps; per trainer the step seconds and peak memory."""
    results = {name: {"seconds": [], "peak": 0} for name in trainers}
    for name, trainer in trainers.items():
        trainer.network.train()
        run_block(trainer, batches[name], args.warmup, 0, device)
    done = 0
    while done < args.iterations:
        steps = min(args.block, args.iterations - done)
        for name, trainer in trainers.items():
            seconds, extra = run_block(trainer, batches[name], steps, args.warmup + done, device)
            results[name]["seconds"] += seconds
            results[name]["peak"] = max(results[name]["peak"], extra + resident_bytes(trainer))
        done += steps
    return results


def parameter_count(trainer) -> int:
    return sum(p.numel() for p in trainer.network.parameters())


def default_n_proc_da() -> int:
    from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

    with environment(nnUNet_n_proc_DA=None):
        return get_allowed_n_proc_DA()


def measure(plans_identifier: str, device: torch.device, args, log) -> dict:
    with contextlib.redirect_stdout(log):
        trainers = {name: make_trainer(name, plans_identifier, device) for name in (STOCK, MASS)}
        fetched = {name: fetch_batches(trainer, args.loader_batches) for name, trainer in trainers.items()}
        batches = {name: batch for name, (batch, _) in fetched.items()}
        steps = time_steps(trainers, batches, args, device)
    stock = trainers[STOCK]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    row = {"device": name,
           "patch": "x".join(map(str, stock.configuration_manager.patch_size)), "batch": stock.batch_size,
           "features": stock.configuration_manager.network_arch_init_kwargs.get("features_per_stage")}
    for name, trainer in trainers.items():
        step = statistics.median(steps[name]["seconds"])
        loader = loader_seconds_per_batch(fetched[name][1])
        row[name] = {"params": parameter_count(trainer), "step_s": step, "min_step_s": min(steps[name]["seconds"]),
                     "loader_sps": trainer.batch_size / loader,
                     "required_sps": trainer.batch_size / step, "peak_mib": steps[name]["peak"] / 2 ** 20}
    return row


def print_report(plans_identifier: str, row: dict, device: torch.device, n_default: int) -> None:
    stock, mass = row[STOCK], row[MASS]
    print(f"\n[{device.type}] {row['device']}; plans {plans_identifier}, patch {row['patch']}, "
          f"features {row['features']}, batch {row['batch']}")
    if device.type == "cuda":
        print("AMP: stock fp16 autocast + GradScaler, MASS bf16 autocast; peak MiB stock "
              f"{stock['peak_mib']:.0f}, MASS {mass['peak_mib']:.0f}")
    header = ("plans", "patch", "batch", "params stock/MASS", "step s stock/MASS", "ratio",
              "loader sps stock/MASS", "required sps stock/MASS")
    values = (plans_identifier, row["patch"], str(row["batch"]),
              f"{stock['params'] / 1e6:.2f}M/{mass['params'] / 1e6:.2f}M",
              f"{stock['step_s']:.3f}/{mass['step_s']:.3f}", f"{mass['step_s'] / stock['step_s']:.2f}x",
              f"{stock['loader_sps']:.1f}/{mass['loader_sps']:.1f}",
              f"{stock['required_sps']:.1f}/{mass['required_sps']:.1f}")
    widths = [max(len(h), len(v)) for h, v in zip(header, values)]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-+-".join("-" * w for w in widths))
    print(" | ".join(v.ljust(w) for v, w in zip(values, widths)))
    print(f"fastest step s stock/MASS: {stock['min_step_s']:.3f}/{mass['min_step_s']:.3f} "
          f"(ratio {mass['min_step_s'] / stock['min_step_s']:.2f}x)")
    for name, short in ((STOCK, "stock"), (MASS, "MASS")):
        needed = math.ceil(row[name]["required_sps"] / row[name]["loader_sps"])
        verdict = "keeps up" if needed <= max(n_default, 1) else "BOTTLENECK"
        print(f"{short}: {needed} loader process(es) needed; default get_allowed_n_proc_DA() = {n_default} "
              f"-> {verdict}")


def main():
    args = parse_args()
    set_nnunet_folders(args.workdir)
    if args.threads:
        torch.set_num_threads(args.threads)
    log_path = args.log or args.workdir / "bench_log.txt"
    with open(log_path, "a") as log:
        with environment(nnUNet_n_proc_DA=None), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            plans_identifier = build_dataset(args)  # the planner must not see nnUNet_n_proc_DA=0
        n_default = default_n_proc_da()
        devices = [torch.device(d) for d in dict.fromkeys(args.devices)]
        print(f"steps: {args.warmup} warm-up + {args.iterations} timed per trainer in blocks of {args.block}; "
              f"loader: {args.loader_batches} batches; medians. nnU-Net output: {log_path}")
        print(f"host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start (other jobs slow "
              "multi-threaded CPU steps a lot; compare with --threads 1)")
        with environment(nnUNet_n_proc_DA="0"):
            for device in devices:
                if device.type == "cuda" and not torch.cuda.is_available():
                    print("\n[cuda] no GPU here: device name, AMP step times and peak memory need a GPU")
                    continue
                if device.type == "cuda":
                    torch.backends.cudnn.benchmark = True  # as nnUNetv2_train does
                row = measure(plans_identifier, device, args, log)
                print_report(plans_identifier, row, device, n_default)


if __name__ == "__main__":
    main()
