"""The low-label report: Dice per arm and labeled-case count over seeds, as a table and a plot."""
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

SCRATCH, PRETRAINED = "scratch", "pretrained"  # the two arms of every run


def aggregate(results: Sequence[dict]) -> dict:
    """Mean and standard deviation over seeds, per arm and labeled-case count, overall and per label."""
    table = {}
    for arm in (SCRATCH, PRETRAINED):
        for count in sorted({r["num_cases"] for r in results}):
            runs = [r for r in results if r["arm"] == arm and r["num_cases"] == count]
            if not runs:
                continue
            labels = sorted({label for r in runs for label in r["per_label"]}, key=int)
            table.setdefault(arm, {})[count] = {
                "runs": len(runs),
                "mean": _stats([r["mean"] for r in runs]),
                "per_label": {label: _stats([r["per_label"][label] for r in runs if label in r["per_label"]])
                              for label in labels},
            }
    for count, entry in table.get(PRETRAINED, {}).items():
        gains = paired_gains(results, count)
        if gains:
            entry["gain"] = {**_stats(gains), "ahead": sum(g > 0 for g in gains)}
    return table


def paired_gains(results: Sequence[dict], count: int) -> list:
    """Pretrained minus scratch Dice on each training subset (fold) both arms ran on: the
    subsets differ far more than the arms, so the spread of the gain is read per pair."""
    pretrained, scratch = ({r["fold"]: r["mean"] for r in results if r["arm"] == arm and r["num_cases"] == count}
                           for arm in (PRETRAINED, SCRATCH))
    return [pretrained[f] - scratch[f] for f in sorted(pretrained.keys() & scratch.keys())]


def _stats(values: Sequence[float]) -> dict:
    values = np.asarray(values, dtype=float)
    return {"mean": float(np.nanmean(values)), "std": float(np.nanstd(values)), "values": values.tolist()}


def format_table(table: dict, label_names: Mapping[str, str]) -> str:
    """Dice (mean ± std over seeds) per labeled-case count, both arms side by side, then per label."""
    counts = sorted({c for arm in table.values() for c in arm})
    lines = [f"{'labeled cases':>13}  {'scratch':>15}  {'pretrained':>15}  {'gain (Dice points)':>18}  ahead"]
    for count in counts:
        cells = [table.get(arm, {}).get(count) for arm in (SCRATCH, PRETRAINED)]
        text = [f"{c['mean']['mean']:.3f} ± {c['mean']['std']:.3f}" if c else "-" for c in cells]
        gain, ahead = _gain_text(cells[1].get("gain") if cells[1] else None)
        lines.append(f"{count:>13}  {text[0]:>15}  {text[1]:>15}  {gain:>18}  {ahead}")
    for count in counts:
        lines.append(f"\nper label, {count} labeled case(s): scratch -> pretrained")
        labels = {lab for arm in table.values() for lab in arm.get(count, {}).get("per_label", {})}
        for label in sorted(labels, key=int):
            values = [table.get(arm, {}).get(count, {}).get("per_label", {}).get(label) for arm in (SCRATCH, PRETRAINED)]
            text = [f"{v['mean']:.3f}" if v else "-" for v in values]
            lines.append(f"  {label_names.get(label, label):<14} {text[0]:>7} -> {text[1]:>7}")
    return "\n".join(lines)


def _gain_text(gain) -> tuple:
    """('+10.0 ± 12.7', '4/6'): the paired gain in Dice points and on how many subsets pretraining led."""
    if not gain:
        return "-", "-"
    return f"{100 * gain['mean']:+.1f} ± {100 * gain['std']:.1f}", f"{gain['ahead']}/{len(gain['values'])}"


def plot(table: dict, output_file: Path) -> None:
    """Mean Dice over labeled-case count, both arms, error bars one standard deviation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.5))
    for arm, style in ((SCRATCH, "o--"), (PRETRAINED, "s-")):
        rows = sorted(table.get(arm, {}).items())
        if rows:
            axis.errorbar([c for c, _ in rows], [r["mean"]["mean"] for _, r in rows],
                          yerr=[r["mean"]["std"] for _, r in rows], fmt=style, capsize=3, label=arm)
    axis.set_xlabel("labeled training cases")
    axis.set_ylabel("held-out Dice (foreground mean)")
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(output_file, dpi=120)
    plt.close(figure)
