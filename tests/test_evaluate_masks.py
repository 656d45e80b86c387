"""nnUNetv2_mass_evaluate_masks: ABO and recall of stored proposals against nnU-Net's preprocessed labels."""
import json

import numpy as np
import pytest

from helpers import copy_dataset, preprocessed_phantoms, read_preprocessed
from nnunet_mass.masks.evaluate import (case_overlaps, evaluate_dataset_masks, format_tables, ground_truth,
                                        label_names, summarize)
from nnunet_mass.masks.inspect import MaskQAError
from nnunet_mass.masks.stack import MaskInfo, MaskStack
from nnunet_mass.masks.store import save_mask_stack

DATASET_ID = 104
DATASET = "Dataset104_EvaluatePhantoms"
CASES = ["phantom_000", "phantom_001"]
NAMES = ["liver", "kidney", "spleen", "vessel", "vertebrae", "lesion"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A 2-case labelled phantom dataset preprocessed by nnU-Net (Python API, this process), no masks yet."""
    return preprocessed_phantoms(tmp_path_factory.mktemp("pristine"), DATASET_ID, DATASET.split("_", 1)[1],
                                 num_cases=2, seed=7, shape=(24, 32, 32))


@pytest.fixture
def dataset(pristine, nnunet_env):
    return copy_dataset(pristine, nnunet_env, DATASET)


def read_seg(dataset, case):
    return read_preprocessed(dataset, case, "_seg")


def import_labels_as_masks(dataset):
    from nnunet_mass.masks.dataset_masks import generate_dataset_masks

    assert generate_dataset_masks(DATASET_ID, from_labels=str(dataset["raw"] / "labelsTr"), mix_generated=False).ok


def hand_built_case():
    """GT with label 1, label 2 in two separate blobs, label 3; proposals: exact 1 and 2 (source
    "exact"), and half of label 3 (source "half"), in two layers."""
    gt = np.zeros((6, 8, 8), dtype=np.int32)
    gt[0:2, 0:4, 0:4] = 1
    gt[3:5, 0:2, 0:2] = 2
    gt[3:5, 6:8, 6:8] = 2
    gt[0:4, 6:8, 0:4] = 3  # 32 voxels
    layers = np.zeros((2, 6, 8, 8), dtype=np.uint16)
    layers[0] = np.where(gt < 3, gt, 0)
    layers[1, 0:2, 6:8, 0:4] = 1  # 16 voxels of label 3: IoU 0.5
    masks = [MaskInfo(0, 1, 32, "exact"), MaskInfo(0, 2, 16, "exact"), MaskInfo(1, 1, 16, "half")]
    return gt, MaskStack(layers, masks)


def test_best_overlaps_per_structure_and_source():
    gt, stack = hand_built_case()
    result = case_overlaps(gt, stack)
    assert result["owner"] == {1: 1, 2: 2, 3: 3}
    assert result["best"] == {1: 1.0, 2: 1.0, 3: pytest.approx(0.5)}
    assert result["by_source"]["exact"] == {1: 1.0, 2: 1.0, 3: 0.0}
    assert result["by_source"]["half"] == {1: 0.0, 2: 0.0, 3: pytest.approx(0.5)}

    one_blob = MaskStack(np.where(np.arange(8)[None, None, :] < 4, stack.layers, 0).astype(np.uint16), stack.masks)
    instances = case_overlaps(gt, one_blob, instances=True)  # label 2 is two structures; one is proposed
    assert sorted(v for s, v in instances["best"].items() if instances["owner"][s] == 2) == [0.0, 1.0]

    summary = summarize({"a": result, "b": case_overlaps(gt, MaskStack(stack.layers[1:], [
        MaskInfo(0, 1, 16, "half")]))}, {1: "one", 2: "two", 3: "three", 4: "four"}, 0.5)
    assert summary["per_label"]["one"] == {"value": 1, "abo": 0.5, "recall": 0.5, "count": 2}
    assert summary["per_label"]["three"]["abo"] == pytest.approx(0.5) and summary["per_label"]["three"]["recall"] == 1
    assert summary["per_label"]["four"]["count"] == 0  # named in dataset.json, never present
    assert summary["overall"] == {"abo": pytest.approx(0.5), "recall": pytest.approx(4 / 6), "count": 6}
    assert summary["label_mean"]["abo"] == pytest.approx(0.5)
    table = format_tables({**summary, "iou_threshold": 0.5})
    assert "three" in table and "recall@0.5" in table and "half" in table


def test_label_names_ignore_label_and_pseudo_labels():
    names, ignore, warnings = label_names({"labels": {"background": 0, "liver": 1, "tumour": 2, "ignore": 3}})
    assert names == {1: "liver", 2: "tumour"} and ignore == 3 and warnings == []
    seg = np.array([[[-1, 0, 1, 3, 2]]], dtype=np.int8)
    assert ground_truth(seg, ignore).tolist() == [[[0, 0, 1, 0, 2]]]
    _, _, warnings = label_names({"labels": {"background": 0, "foreground": 1}})
    assert len(warnings) == 1 and "body masks" in warnings[0]


def test_proposals_holding_the_exact_labels_score_one(dataset, tmp_path, capsys):
    import_labels_as_masks(dataset)
    out = tmp_path / "results.json"
    result = evaluate_dataset_masks(DATASET_ID, output_file=out)
    printed = capsys.readouterr().out
    assert list(result["per_label"]) == NAMES
    for name in NAMES:
        assert result["per_label"][name]["count"] == 2  # every label is in both cases
        assert result["per_label"][name]["abo"] == 1.0 and result["per_label"][name]["recall"] == 1.0
        assert name in printed
    assert result["overall"] == {"abo": 1.0, "recall": 1.0, "count": 12}
    assert "imported label maps" in printed  # scores of a dataset's own labels are trivially perfect
    assert json.loads(out.read_text())["per_case"]["phantom_001"]["kidney"] == [1.0]


def test_a_label_without_proposal_scores_zero(dataset, tmp_path):
    for case in CASES:
        seg = ground_truth(read_seg(dataset, case))
        layers = np.where(seg == 3, 0, seg).astype(np.uint16)[None]  # every label but the spleen
        stack = MaskStack.from_layers([layers[0]], ["atlas"])
        save_mask_stack(dataset["masks"], case, stack, {"data_shape": [1, *seg.shape]})
    result = evaluate_dataset_masks(DATASET_ID, output_file=tmp_path / "r.json")
    assert result["per_label"]["spleen"] == {"value": 3, "abo": 0.0, "recall": 0.0, "count": 2}
    assert result["per_label"]["liver"]["abo"] == 1.0
    assert result["overall"]["abo"] == pytest.approx(10 / 12) and result["per_source"]["atlas"]["count"] == 12
    assert result["per_case"]["phantom_000"]["spleen"] == [0.0]


def test_command_line_errors_and_pseudo_label_warning(dataset, capsys):
    from nnunet_mass.cli.evaluate_masks import main

    with pytest.raises(SystemExit) as missing:
        main(["-d", str(DATASET_ID)])
    assert "nnUNetv2_mass_generate_masks -d 104 -c 3d_fullres -p nnUNetPlans" in str(missing.value.code)

    import_labels_as_masks(dataset)
    out = dataset["preprocessed"] / "out.json"
    main(["-d", DATASET, "-c", "3d_fullres", "-p", "nnUNetPlans", "-o", str(out), "--cases", "phantom_001"])
    assert json.loads(out.read_text())["cases"] == ["phantom_001"] and "vertebrae" in capsys.readouterr().out
    main(["-d", str(DATASET_ID), "--instances"])  # default output beside the masks
    assert json.loads((dataset["masks"] / "qa" / "evaluation.json").read_text())["instances"] is True

    dataset_json = dataset["preprocessed"] / "dataset.json"
    content = json.loads(dataset_json.read_text())
    dataset_json.write_text(json.dumps({**content, "labels": {"background": 0, "foreground": 1}}))
    main(["-d", str(DATASET_ID), "-o", str(out)])
    printed = capsys.readouterr().out
    assert "WARNING" in printed and "body masks" in printed and "foreground" in printed

    (dataset["masks"] / "phantom_000.json").unlink()
    with pytest.raises(SystemExit) as one_missing:
        main(["-d", str(DATASET_ID), "--cases", "phantom_000"])
    assert "phantom_000" in str(one_missing.value.code) and "nnUNetv2_mass_generate_masks" in str(
        one_missing.value.code)


def test_no_ground_truth_is_an_error(dataset):
    import blosc2

    import_labels_as_masks(dataset)
    for case in CASES:
        path = dataset["data"] / f"{case}_seg.b2nd"
        empty = np.zeros_like(read_seg(dataset, case))
        path.unlink()
        blosc2.asarray(empty, urlpath=str(path))
    with pytest.raises(MaskQAError, match="no label > 0"):
        evaluate_dataset_masks(DATASET_ID)
