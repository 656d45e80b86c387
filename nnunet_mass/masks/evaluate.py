"""Proposal quality against the ground truth of a labelled preprocessed dataset.

For each case the ground truth is nnU-Net's own preprocessed segmentation
(`<case>_seg.b2nd`, on the grid the masks live on; -1 outside the nonzero region and the
dataset's ignore label count as background). Every ground-truth structure (a label value,
or with `instances` each connected component of one) gets the best IoU of any of the
case's proposals (`quality.best_overlaps`); ABO is the mean of these best IoUs and
recall@t the fraction reaching t, per label (named from dataset.json), over all
structures, and per proposal source (best IoU using only that source's masks).

Layers are scored one at a time, so a case never holds more than one layer of its stack
in memory besides its image and segmentation.
"""
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from nnunet_mass.masks.inspect import MaskQAError, read_layer, resolve_mask_cases, to_json
from nnunet_mass.masks.quality import best_overlaps, instance_labels
from nnunet_mass.masks.stack import MaskStack
from nnunet_mass.masks.store import open_mask_stack

PSEUDO_LABELS = {"background": 0, "foreground": 1}  # what nnUNetv2_mass_prepare_unlabeled writes


def label_names(dataset_json: dict) -> tuple:
    """({value: name} of the integer labels, ignore value or None, warnings)."""
    labels = dataset_json.get("labels", {})
    names = {int(v): str(n) for n, v in labels.items() if isinstance(v, int) and not isinstance(v, bool) and v > 0}
    ignore = labels.get("ignore") if isinstance(labels.get("ignore"), int) else None
    names.pop(ignore, None)
    warnings = []
    if {str(n).lower(): v for n, v in labels.items()} == PSEUDO_LABELS:
        warnings.append("dataset.json has only the labels background and 'foreground': these are most likely body "
                        "masks (as nnUNetv2_mass_prepare_unlabeled writes), not annotations; the scores below say "
                        "how well one proposal matches the whole body, not proposal quality")
    if any(isinstance(v, (list, tuple)) for v in labels.values()):
        warnings.append("dataset.json defines regions; structures are the integer label values of the segmentation")
    return names, ignore, warnings


def ground_truth(segmentation: np.ndarray, ignore=None) -> np.ndarray:
    """int32 (z, y, x) label map from nnU-Net's (1, z, y, x) or (z, y, x) segmentation: negative
    values (outside the nonzero region) and the ignore label become 0."""
    seg = np.asarray(segmentation)
    seg = seg[0] if seg.ndim == 4 else seg
    keep = seg > 0
    if ignore is not None:
        keep &= seg != ignore
    return np.where(keep, seg, 0).astype(np.int32)


def read_segmentation(data_folder, case: str) -> np.ndarray:
    import blosc2

    path = Path(data_folder) / f"{case}_seg.b2nd"
    if not path.is_file():
        raise MaskQAError(f"case {case}: {path.name} is missing in {data_folder}, so there is no ground truth to "
                          f"score against (only training cases with labelsTr have one); run nnUNetv2_preprocess again")
    return np.asarray(blosc2.open(urlpath=str(path), mode="r")[:])


def case_overlaps(gt: np.ndarray, stack, instances: bool = False, min_voxels: int = 1) -> dict:
    """Best IoU of every ground-truth structure of one case.

    Returns {"owner": {structure: label value}, "best": {structure: IoU},
    "by_source": {source: {structure: IoU}}}; `stack` is a MaskStack or StoredMaskStack on
    the grid of `gt` (int (z, y, x), 0 background).
    """
    if instances:
        structures, owner = instance_labels(gt, min_voxels)
    else:
        structures = gt
        owner = {int(v): int(v) for v in np.unique(gt[gt > 0])}
    best = {s: 0.0 for s in owner}
    by_source = {source: dict(best) for source in sorted({m.source for m in stack.masks})}
    if not owner:
        return {"owner": owner, "best": best, "by_source": by_source}
    for index in sorted({m.layer for m in stack.masks}):
        layer = read_layer(stack, index)[None]  # (1, z, y, x): a one-layer stack
        for source in sorted({m.source for m in stack.masks if m.layer == index}):
            masks = [replace(m, layer=0) for m in stack.masks if m.layer == index and m.source == source]
            for structure, iou in best_overlaps(structures, MaskStack(layer, masks)).items():
                best[structure] = max(best[structure], iou)
                by_source[source][structure] = max(by_source[source][structure], iou)
    return {"owner": owner, "best": best, "by_source": by_source}


def aggregate(ious, threshold: float) -> dict:
    """{"abo": mean best IoU, "recall": fraction >= threshold, "count"} (NaN without structures)."""
    ious = np.asarray(list(ious), dtype=float)
    if ious.size == 0:
        return {"abo": float("nan"), "recall": float("nan"), "count": 0}
    return {"abo": float(ious.mean()), "recall": float((ious >= threshold).mean()), "count": int(ious.size)}


def summarize(per_case: dict, names: dict, threshold: float) -> dict:
    """Per label, overall, mean over labels and per source, from `case_overlaps` results."""
    by_label, everything, by_source = {}, [], {}
    for result in per_case.values():
        for structure, value in result["owner"].items():
            by_label.setdefault(value, []).append(result["best"][structure])
            everything.append(result["best"][structure])
        for source, best in result["by_source"].items():
            by_source.setdefault(source, []).extend(best.values())
    values = sorted(set(names) | set(by_label))
    per_label = {_name(v, names): {"value": v, **aggregate(by_label.get(v, []), threshold)} for v in values}
    present = [s for s in per_label.values() if s["count"]]
    label_mean = {k: float(np.mean([s[k] for s in present])) if present else float("nan") for k in ("abo", "recall")}
    return {"per_label": per_label, "overall": aggregate(everything, threshold), "label_mean": label_mean,
            "per_source": {s: aggregate(ious, threshold) for s, ious in sorted(by_source.items())}}


def _name(value: int, names: dict) -> str:
    return names.get(value, f"label_{value}")


def format_tables(result: dict) -> str:
    t = result["iou_threshold"]
    header = f"{'ABO':>7} {f'recall@{t:g}':>11}"
    lines = [f"{'label':<24} {'value':>5} {'structures':>10} {header}"]
    for name, s in result["per_label"].items():
        lines.append(f"{name:<24} {s['value']:>5} {s['count']:>10} {_cells(s)}")
    lines.append(f"{'all structures':<24} {'':>5} {result['overall']['count']:>10} {_cells(result['overall'])}")
    lines.append(f"{'mean over labels':<24} {'':>5} {'':>10} {_cells(result['label_mean'])}")
    lines += ["", f"{'source (its masks only)':<41} {header}"]
    lines += [f"{source:<41} {_cells(s)}" for source, s in result["per_source"].items()]
    return "\n".join(lines)


def _cells(s: dict) -> str:
    abo, recall = s["abo"], s["recall"]
    if not np.isfinite(abo):
        return f"{'-':>7} {'-':>11}"
    return f"{abo:>7.3f} {100 * recall:>10.1f}%"


def evaluate_dataset_masks(dataset_name_or_id, configuration: str = "3d_fullres",
                           plans_identifier: str = "nnUNetPlans", output_file=None, cases=None,
                           iou_threshold: float = 0.5, instances: bool = False, min_voxels: int = 1) -> dict:
    """ABO and recall of the stored proposals of every (or the named) case; prints the tables,
    writes JSON to `output_file` (default `<mask folder>/qa/evaluation.json`) and returns it.
    Raises MaskQAError without masks (naming the command that makes them) or ground truth."""
    from tqdm import tqdm

    from nnunet_mass.masks.dataset_masks import load_preprocessed_case

    layout = resolve_mask_cases(dataset_name_or_id, configuration, plans_identifier, cases)
    dataset_json = json.loads((layout["dataset_folder"] / "dataset.json").read_text())
    names, ignore, warnings = label_names(dataset_json)
    per_case, sources = {}, set()
    for case in tqdm(layout["cases"], desc="mask quality", unit="case"):
        data, _ = load_preprocessed_case(layout["data_folder"], case)
        stack = open_mask_stack(layout["mask_folder"], case, data_shape=data.shape)
        gt = ground_truth(read_segmentation(layout["data_folder"], case), ignore)
        per_case[case] = case_overlaps(gt, stack, instances, min_voxels)
        sources |= {m.source for m in stack.masks}
    if not any(r["owner"] for r in per_case.values()):
        raise MaskQAError(f"the preprocessed segmentations of {layout['dataset_name']} ({', '.join(layout['cases'])})"
                          f" hold no label > 0: there is no ground truth to measure the proposals against")
    imported = sorted(s for s in sources if s.startswith("labels:"))
    if imported:
        warnings.append(f"proposals include imported label maps ({', '.join(imported)}); if those are this "
                        f"dataset's own labels the overall scores are trivially high: see the per-source table")
    result = {"dataset": layout["dataset_name"], "configuration": configuration, "plans": plans_identifier,
              "iou_threshold": iou_threshold, "instances": instances, "cases": layout["cases"],
              **summarize(per_case, names, iou_threshold), "warnings": warnings + layout["notes"],
              "per_case": {case: _case_json(r, names) for case, r in per_case.items()}}
    for warning in result["warnings"]:
        print(f"WARNING: {warning}")
    print(format_tables(result))
    output = Path(output_file) if output_file is not None else layout["mask_folder"] / "qa" / "evaluation.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(to_json(result), indent=1))
    print(f"results -> {output}")
    return result


def _case_json(result: dict, names: dict) -> dict:
    """{label name: [best IoU of each of its structures]} of one case."""
    out = {}
    for structure, value in result["owner"].items():
        out.setdefault(_name(value, names), []).append(result["best"][structure])
    return out
