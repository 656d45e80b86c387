"""In-context evaluation on a labeled raw dataset: nnUNetv2_mass_evaluate_incontext."""
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import crop_image
from nnunet_mass.cli.evaluate_incontext import main as evaluate_main
from nnunet_mass.downstream.evaluate_incontext import EvaluationError, choose_references, hd95, label_names

CENTRE = (slice(4, 36), slice(4, 36), slice(4, 36))  # one 32^3 window per case; every label stays present


@pytest.fixture
def small_dataset(mass_pretraining, tmp_path):
    """Three of the pretraining phantoms, cropped to their centre, as a labeled raw dataset."""
    source, folder = mass_pretraining["raw"], tmp_path / "Dataset142_SmallPhantoms"
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True)
    for case in ("phantom_000", "phantom_001", "phantom_002"):
        crop_image(source / "imagesTr" / f"{case}_0000.nii.gz", folder / "imagesTr" / f"{case}_0000.nii.gz", CENTRE)
        crop_image(source / "labelsTr" / f"{case}.nii.gz", folder / "labelsTr" / f"{case}.nii.gz", CENTRE)
    shutil.copy(source / "dataset.json", folder / "dataset.json")
    return folder


def test_evaluation_writes_per_label_dice_for_k_1(mass_pretraining, small_dataset, tmp_path, capsys):
    output = tmp_path / "evaluation"
    evaluate_main(["-m", str(mass_pretraining["model_folder"]), "-d", str(small_dataset), "-k", "1",
                   "--labels", "1", "5", "--seed", "3", "-o", str(output), "--hd95", "-device", "cpu"])
    summary = json.loads((output / "summary.json").read_text())
    result = summary["k"]["1"]
    assert set(result["per_label"]) == {"1", "5"}
    for label, scores in result["per_label"].items():
        assert 0 <= scores["Dice"] <= 1 and scores["num_cases"] == 2
        (reference,) = summary["references"][label]
        scored = [case for case, per_label in result["per_case"].items() if label in per_label]
        assert reference not in scored and len(scored) == 2  # a reference is never its own query
    assert result["mean_dice"] == pytest.approx(np.mean([s["Dice"] for s in result["per_label"].values()]))
    predicted = next((output / "k1").glob("*.nii.gz"))
    truth = sitk.ReadImage(str(small_dataset / "labelsTr" / predicted.name))
    assert sitk.ReadImage(str(predicted)).GetSize() == truth.GetSize()
    printed = capsys.readouterr().out
    assert "liver (1)" in printed and "vertebrae (5)" in printed and "HD95 k=1" in printed


def test_references_are_seeded_nested_and_independent_of_other_labels():
    present = {f"case_{i}": {1, 2} if i % 2 else {1} for i in range(8)}
    three, _ = choose_references(present, [1, 2], 3, seed=0)
    assert three == choose_references(present, [1, 2], 3, seed=0)[0]
    assert choose_references(present, [2], 3, seed=0)[0][2] == three[2]  # label 1 does not shift label 2's draw
    assert all(2 in present[case] for case in three[2])
    assert choose_references(present, [1], 3, seed=1)[0][1] != three[1]
    references, skipped = choose_references(present, [1, 2], 5, seed=0)
    assert list(references) == [1] and "present in 4 of 8 cases" in skipped[2]


def test_hd95_is_in_millimetres():
    reference, prediction = np.zeros((1, 1, 10), bool), np.zeros((1, 1, 10), bool)
    reference[0, 0, 2], prediction[0, 0, 5] = True, True
    assert hd95(reference, prediction, (1.0, 1.0, 2.0)) == pytest.approx(6.0)
    assert hd95(reference, reference, (1.0, 1.0, 2.0)) == 0.0
    assert hd95(reference, np.zeros_like(reference), (1.0, 1.0, 2.0)) is None


def test_bad_datasets_and_labels_are_explained(mass_pretraining, small_dataset, tmp_path):
    with pytest.raises(EvaluationError, match=r"labels \[9\] are not in dataset.json"):
        label_names({"labels": {"background": 0, "liver": 1}}, [9])
    with pytest.raises(EvaluationError, match="is a region"):
        label_names({"labels": {"background": 0, "organs": [1, 2]}})
    with pytest.raises(SystemExit, match="no label can be evaluated with k=3"):
        evaluate_main(["-m", str(mass_pretraining["model_folder"]), "-d", str(small_dataset), "-k", "3",
                       "-o", str(tmp_path / "out"), "-device", "cpu"])
