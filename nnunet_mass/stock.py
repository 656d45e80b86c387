"""Running nnU-Net's own command-line tools as a user would, in subprocesses.

The demo and the end-to-end tests go through the stock entry points on purpose: that is
what proves trainer discovery, plans and checkpoints work without anything of ours in the
loop.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Sequence


def nnunet_folders(workdir: Path) -> dict:
    """nnU-Net's three folders under `workdir`, created, as environment variables."""
    folders = {name: Path(workdir) / name for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    return {name: str(folder) for name, folder in folders.items()}


def cpu_environment(workdir: Path, extra: Mapping[str, str] = ()) -> dict:
    """The environment for CPU runs: our folders, small process pools, no torch.compile."""
    env = dict(os.environ)
    env.update(nnunet_folders(workdir))
    env.update({"nnUNet_def_n_proc": "2", "nnUNet_compile": "false"})
    env.update(dict(extra))
    return env


def train_on_cpu(args: Sequence, env: Mapping[str, str], log_file: Path | None = None) -> None:
    """`nnUNetv2_train args... -device cpu` with augmentation in the main process: at tiny
    patch sizes worker processes cost more than they save (and the planner, which reads
    the same variable for its thread count, must not see 0)."""
    run_stock("nnUNetv2_train", [*args, "-device", "cpu"], {**env, "nnUNet_n_proc_DA": "0"}, log_file)


def stock_command(name: str) -> str:
    """Path of an nnU-Net console script installed beside this interpreter."""
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found beside {sys.executable} nor on PATH: is nnunetv2 installed?")
    return found


def run_stock(name: str, args: Sequence[str], env: Mapping[str, str], log_file: Path | None = None) -> None:
    """Run `name args...`; on failure raise with the tail of its output."""
    command = [stock_command(name), *map(str, args)]
    result = subprocess.run(command, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if log_file is not None:
        with open(log_file, "a") as log:
            log.write(f"$ {' '.join(command)}\n{result.stdout}\n")
    if result.returncode != 0:
        tail = "\n".join(result.stdout.splitlines()[-40:])
        raise RuntimeError(f"`{' '.join(command)}` failed with exit code {result.returncode}:\n{tail}")
