"""Few-shot in-context segmentation scored on a labeled nnU-Net raw dataset (imagesTr/labelsTr).

For every label, a seeded draw orders the cases that contain it; the first k of them are
its references (so the k = 1 references are among the k = 3 ones). Every case that is not
among the first max(k) references of a label is a query for that label, for every k, so
the values of k are compared on the same queries. A query case is segmented once per k,
with only the labels it is a query for (tasks are independent, so leaving the others out
changes nothing but the overlap resolution between them). Predictions are written in the
case's geometry and scored with nnU-Net's own per-case metrics (`compute_metrics`: Dice and
IoU per label; NaN where the label is absent from both reference and prediction, so a
false positive in a case without the label scores 0, as in nnU-Net's evaluation).
HD95 (optional) is the 95th percentile of the symmetric surface distances in millimetres.
"""
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from nnunet_mass.downstream.incontext import InContextSegmenter
from nnunet_mass.downstream.model import DEFAULT_CHECKPOINT, PretrainedModel, load_pretrained_model
from nnunet_mass.raw_datasets import RawDatasetError, find_raw_dataset

SUMMARY_FILE = "summary.json"


class EvaluationError(ValueError):
    pass


def raw_dataset_folder(dataset: Union[str, int, Path]) -> Path:
    """An nnU-Net raw dataset by id or name (in $nnUNet_raw), or by its folder path."""
    if Path(str(dataset)).is_dir():
        return Path(str(dataset))
    try:
        return find_raw_dataset(dataset).folder
    except RawDatasetError as error:
        raise EvaluationError(f"{error} (or give the dataset's folder)") from None


def labeled_cases(raw_folder: Path, dataset_json: dict) -> Dict[str, dict]:
    """{case: {"images": [...], "label": file}} of imagesTr/labelsTr (or dataset.json's "dataset")."""
    from nnunetv2.utilities.utils import (create_lists_from_splitted_dataset_folder,
                                          get_filenames_of_train_images_and_targets,
                                          get_identifiers_from_splitted_dataset_folder)

    if "dataset" in dataset_json:
        cases = get_filenames_of_train_images_and_targets(str(raw_folder), dataset_json)
    else:
        images_folder, ending = str(raw_folder / "imagesTr"), dataset_json["file_ending"]
        identifiers = list(get_identifiers_from_splitted_dataset_folder(images_folder, ending))
        images = create_lists_from_splitted_dataset_folder(images_folder, ending, identifiers, num_processes=1)
        cases = {case: {"images": files, "label": str(raw_folder / "labelsTr" / (case + ending))}
                 for case, files in zip(identifiers, images)}
    cases = {case: entry for case, entry in sorted(cases.items()) if Path(entry["label"]).is_file()}
    if len(cases) < 2:
        raise EvaluationError(f"{raw_folder}: {len(cases)} labeled case(s) (imagesTr + labelsTr); "
                              "in-context evaluation needs references and other cases to segment")
    return cases


def label_names(dataset_json: dict, labels: Optional[Sequence[int]] = None) -> Dict[int, str]:
    """{label value: name} of the dataset's foreground labels (or of the chosen ones)."""
    names = {}
    for name, value in dataset_json["labels"].items():
        if isinstance(value, (list, tuple)):
            raise EvaluationError(f"dataset label {name} is a region {value}: in-context evaluation scores "
                                  "plain labels only")
        if int(value) > 0 and name != "ignore":
            names[int(value)] = name
    if labels is not None:
        unknown = sorted(set(labels) - set(names))
        if unknown:
            raise EvaluationError(f"labels {unknown} are not in dataset.json (it has {sorted(names)})")
        names = {label: names[label] for label in sorted(set(labels))}
    return names


def labels_present(cases: Dict[str, dict], reader_writer) -> Dict[str, set]:
    """{case: label values present in its ground truth}."""
    return {case: {int(v) for v in np.unique(reader_writer.read_seg(entry["label"])[0]) if v > 0}
            for case, entry in cases.items()}


def choose_references(present: Dict[str, set], labels: Sequence[int], k_max: int, seed: int):
    """({label: its first k_max references}, {label: why it is skipped}). A label's draw depends
    only on (seed, label), so adding labels or cases elsewhere does not change it."""
    references, skipped = {}, {}
    for label in labels:
        eligible = [case for case in sorted(present) if label in present[case]]
        if len(eligible) < k_max or len(present) <= k_max:
            skipped[label] = (f"present in {len(eligible)} of {len(present)} cases; k={k_max} needs {k_max} "
                              "references and at least one other case")
            continue
        order = np.random.default_rng([seed, label]).permutation(len(eligible))
        references[label] = [eligible[i] for i in order[:k_max]]
    return references, skipped


def hd95(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float]) -> Optional[float]:
    """95th percentile of the symmetric surface distances in mm (spacing in array axis order);
    None where either mask is empty."""
    from scipy.ndimage import binary_erosion, distance_transform_edt

    if not reference.any() or not prediction.any():
        return None
    surfaces = [mask & ~binary_erosion(mask) for mask in (reference, prediction)]
    to_reference = distance_transform_edt(~surfaces[0], sampling=spacing)
    to_prediction = distance_transform_edt(~surfaces[1], sampling=spacing)
    return float(np.percentile(np.concatenate([to_reference[surfaces[1]], to_prediction[surfaces[0]]]), 95))


def score_case(reference_file: str, prediction_file: str, reader_writer, labels: Sequence[int],
               with_hd95: bool) -> Dict[int, dict]:
    """{label: {"Dice", "IoU", ["HD95"]}} of one case, by nnU-Net's compute_metrics."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics

    metrics = compute_metrics(reference_file, prediction_file, reader_writer, list(labels))["metrics"]
    scores = {label: {"Dice": _number(metrics[label]["Dice"]), "IoU": _number(metrics[label]["IoU"])}
              for label in labels}
    if with_hd95:
        truth, properties = reader_writer.read_seg(reference_file)
        predicted, _ = reader_writer.read_seg(prediction_file)
        for label in labels:
            scores[label]["HD95"] = hd95(truth[0] == label, predicted[0] == label, properties["spacing"])
    return scores


def _number(value) -> Optional[float]:
    return None if value is None or not np.isfinite(value) else float(value)


def evaluate_k(model: PretrainedModel, cases: Dict[str, dict], references: Dict[int, List[str]], k: int,
               output_folder: Path, reader_writer, file_ending: str, settings: dict) -> dict:
    """Per-case and per-label scores with the first k references of each label."""
    segmenter = InContextSegmenter(model, settings["device"], settings["tile_step_size"],
                                   settings["largest_component"])
    for case in sorted({c for refs in references.values() for c in refs[:k]}):
        chosen = [label for label, refs in references.items() if case in refs[:k]]
        segmenter.add_reference(cases[case]["images"], cases[case]["label"], chosen)
    per_case = {}
    for case, entry in cases.items():
        labels = [label for label, refs in references.items() if case not in refs]
        if labels:
            prediction = segmenter.predict_to_file(entry["images"], output_folder / f"k{k}" / case, labels,
                                                   file_ending=file_ending)
            per_case[case] = score_case(entry["label"], prediction, reader_writer, labels, settings["hd95"])
    return {"per_label": _per_label(per_case, references), "per_case": per_case}


def _per_label(per_case: Dict[str, dict], references: Dict[int, list]) -> Dict[int, dict]:
    """Mean of each metric over the cases where it is defined (nnU-Net's nanmean)."""
    summary = {}
    for label in references:
        scores = [case[label] for case in per_case.values() if label in case]
        summary[label] = {"num_cases": len(scores)}
        for metric in (scores[0] if scores else {}):
            values = [s[metric] for s in scores if s[metric] is not None]
            summary[label][metric] = float(np.mean(values)) if values else None
    return summary


def evaluate_model(model: PretrainedModel, raw_folder: Path, ks: Sequence[int] = (1,), seed: int = 0,
                   output_folder: Optional[Path] = None, labels: Optional[Sequence[int]] = None,
                   device: Optional[torch.device] = None, tile_step_size: float = 0.5,
                   largest_component: bool = False, with_hd95: bool = False, verbose: bool = True) -> dict:
    """Evaluate a loaded model on `raw_folder`; writes predictions and summary.json to `output_folder`."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 1:
        raise EvaluationError(f"k must be >= 1, got {ks}")
    raw_folder = Path(raw_folder)
    dataset_json = load_json(str(raw_folder / "dataset.json"))
    names = label_names(dataset_json, labels)
    cases = labeled_cases(raw_folder, dataset_json)
    example = next(iter(cases.values()))["images"][0]
    reader_writer = determine_reader_writer_from_dataset_json(dataset_json, example, verbose=False)()
    references, skipped = choose_references(labels_present(cases, reader_writer), list(names), ks[-1], seed)
    if not references:
        raise EvaluationError(f"no label can be evaluated with k={ks[-1]}: {skipped}")
    output_folder = Path(output_folder) if output_folder is not None else model.checkpoint.parent / (
        "incontext_" + raw_folder.name)
    settings = {"device": device, "tile_step_size": tile_step_size, "largest_component": largest_component,
                "hd95": with_hd95}
    results = {k: evaluate_k(model, cases, references, k, output_folder, reader_writer, dataset_json["file_ending"],
                             settings) for k in ks}
    summary = _summary(model, raw_folder, names, references, skipped, results, seed, settings)
    output_folder.mkdir(parents=True, exist_ok=True)
    (output_folder / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
    if verbose:
        print(format_table(summary))
    return summary


def _summary(model, raw_folder, names, references, skipped, results, seed, settings) -> dict:
    by_k = {}
    for k, result in results.items():
        means = {metric: _mean_over_labels(result["per_label"], metric) for metric in ("Dice", "IoU", "HD95")}
        by_k[str(k)] = {"mean_dice": means["Dice"], "mean": means,
                        "per_label": {str(label): {"name": names[label], **scores}
                                      for label, scores in result["per_label"].items()},
                        "per_case": {case: {str(label): s for label, s in scores.items()}
                                     for case, scores in result["per_case"].items()}}
    return {"model": str(model.checkpoint), "dataset": str(raw_folder), "seed": seed,
            "tile_step_size": settings["tile_step_size"], "largest_component": settings["largest_component"],
            "references": {str(label): refs for label, refs in references.items()},
            "skipped_labels": {str(label): why for label, why in skipped.items()}, "k": by_k}


def _mean_over_labels(per_label: Dict[int, dict], metric: str) -> Optional[float]:
    values = [scores[metric] for scores in per_label.values() if scores.get(metric) is not None]
    return float(np.mean(values)) if values else None


def format_table(summary: dict) -> str:
    """Dice (and HD95 in mm, where computed) per label and k, and the mean Dice over labels."""
    ks = list(summary["k"])
    first = summary["k"][ks[0]]["per_label"]
    metrics = [m for m in ("Dice", "HD95") if m in next(iter(first.values()))]
    header = f"{'label':<24}" + "".join(f"{f'{m} k={k}':>13}" for m in metrics for k in ks)
    rows = [header]
    for label, entry in first.items():
        cells = [summary["k"][k]["per_label"][label][m] for m in metrics for k in ks]
        rows.append(f"{entry['name'] + ' (' + label + ')':<24}" + "".join(_cell(c) for c in cells))
    rows.append(f"{'mean':<24}" + "".join(_cell(summary["k"][k]["mean"][m]) for m in metrics for k in ks))
    return "\n".join(rows)


def _cell(value) -> str:
    return f"{'-':>13}" if value is None else f"{value:>13.3f}"


def evaluate_incontext(model_folder: Union[str, Path], dataset: Union[str, int, Path], ks: Sequence[int] = (1,),
                       seed: int = 0, output_folder: Optional[Union[str, Path]] = None,
                       labels: Optional[Sequence[int]] = None, fold: Optional[str] = None,
                       checkpoint_name: str = DEFAULT_CHECKPOINT, device: torch.device = torch.device("cpu"),
                       tile_step_size: float = 0.5, largest_component: bool = False, with_hd95: bool = False) -> dict:
    """Load a MASS pretraining and evaluate its in-context segmentation on a labeled raw dataset;
    the default output folder is <model folder>/fold_X/incontext_<dataset>."""
    model = load_pretrained_model(model_folder, fold, checkpoint_name, device)
    return evaluate_model(model, raw_dataset_folder(dataset), ks, seed, output_folder, labels, device,
                          tile_step_size, largest_component, with_hd95)
