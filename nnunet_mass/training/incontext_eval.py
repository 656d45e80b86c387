"""In-context evaluation of a pretraining network on pretext episodes of chosen cases.

Used for the end-of-training evaluation that replaces nnU-Net's sliding-window validation
(a pretext network segments what a reference mask shows, not the dataset's classes), and by
benchmarks that score held-out cases' masks or labels.
"""
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from nnunet_mass.training.losses import task_dice

FINAL_EVALUATION_SEED = 12345
EPISODES_PER_CASE = 8


def scored_task_dice(logits: torch.Tensor, episode: dict) -> np.ndarray:
    """Hard Dice of the tasks worth scoring: valid, not the whole-field-of-view task (trivial),
    and with something to find in the query (an empty target has no Dice; the loss covers it)."""
    whole_view = episode["reference_masks"].flatten(2).all(-1)
    present = episode["query_masks"].flatten(2).any(-1)
    dice = task_dice(logits, episode["query_masks"])[episode["valid"] & ~whole_view & present]
    return dice.detach().float().cpu().numpy()


@torch.no_grad()
def evaluate_episodes(network, loader, cases: Sequence[str], episodes_per_case: int, device: torch.device,
                      autocast=None) -> dict:
    """Dice of every scored task over `episodes_per_case` episodes of each case drawn by
    `loader.make_sample` (a MASSPretextDataLoader; seed it to repeat the same episodes)."""
    network.eval()
    per_case = {}
    for case in cases:
        dices = []
        for _ in range(episodes_per_case):
            episode = {k: v[None].to(device) for k, v in loader.make_sample(case).items()}
            with autocast if autocast is not None else torch.autocast("cpu", enabled=False):
                logits = network(episode["query"], episode["reference"], episode["reference_masks"].float())
            dices.append(scored_task_dice(logits, episode))
        per_case[case] = np.concatenate(dices)
    every = np.concatenate(list(per_case.values())) if per_case else np.zeros(0)
    return {"mean_dice": float(every.mean()) if every.size else float("nan"), "num_tasks": int(every.size),
            "cases": list(cases), "episodes_per_case": episodes_per_case,
            "per_case": {case: {"mean_dice": float(d.mean()) if d.size else None, "num_tasks": int(d.size)}
                         for case, d in per_case.items()}}


def write_final_evaluation(trainer) -> dict:
    """Evaluate the trainer's EMA on its validation cases and write validation/summary.json."""
    _, val_keys = trainer.do_split()
    loader = trainer.pretext_loader(val_keys, seed=FINAL_EVALUATION_SEED, batch_size=1)
    summary = evaluate_episodes(trainer.ema.module, loader, val_keys, EPISODES_PER_CASE, trainer.device,
                                trainer._autocast())
    summary = {"metric": "in-context Dice of the EMA weights on pretext episodes of the validation cases "
                         "(same-scan reference and query views; whole-view and empty-target tasks not scored)",
               "seed": FINAL_EVALUATION_SEED, **summary}
    folder = Path(trainer.output_folder) / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(summary, indent=1))
    trainer.print_to_log_file(f"Final in-context evaluation: mean Dice {summary['mean_dice']:.4f} over "
                              f"{summary['num_tasks']} tasks of {len(val_keys)} validation cases")
    return summary
