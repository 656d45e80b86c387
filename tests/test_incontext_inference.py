"""Few-shot in-context segmentation: InContextSegmenter and nnUNetv2_mass_incontext."""
import dataclasses
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage
from torch import nn

from helpers import crop_image
from nnunet_mass.cli.incontext import main as incontext_main
from nnunet_mass.downstream.cases import image_cases
from nnunet_mass.downstream.incontext import (InContextInputError, InContextSegmenter, combine_tasks,
                                              keep_largest_components)
from nnunet_mass.downstream.model import load_pretrained_model

# A query of another geometry than the phantoms (2.0, 2.0, 2.5 mm): nnU-Net resamples it to the
# plans' spacing and back. Its resampled size stays within one 32^3 window, so tests stay fast.
QUERY_BOX = (slice(8, 32), slice(5, 35), slice(6, 34))  # (z, y, x): 24 x 30 x 28 voxels
QUERY_GEOMETRY = {"spacing_xyz": (2.1, 2.0, 3.0), "origin_xyz": (12.5, -30.0, 7.25),
                  "direction": (1, 0, 0, 0, -1, 0, 0, 0, -1)}


def logit(probability):
    return np.log(probability) - np.log1p(-probability)


def image(raw, case):
    return raw / "imagesTr" / f"{case}_0000.nii.gz"


def labels(raw, case):
    return raw / "labelsTr" / f"{case}.nii.gz"


@pytest.fixture(scope="module")
def model(mass_pretraining):
    return load_pretrained_model(mass_pretraining["model_folder"])


@pytest.fixture(scope="module")
def raw(mass_pretraining):
    return mass_pretraining["raw"]


@pytest.fixture(scope="module")
def query(raw, tmp_path_factory):
    """phantom_001, cropped, with another spacing, origin and direction."""
    target = tmp_path_factory.mktemp("query") / "query_0000.nii.gz"
    crop_image(image(raw, "phantom_001"), target, QUERY_BOX, **QUERY_GEOMETRY)
    return target


@pytest.fixture(scope="module")
def liver_and_kidney(model, raw):
    """A segmenter with labels 1 and 2 of phantom_000."""
    segmenter = InContextSegmenter(model, torch.device("cpu"))
    assert segmenter.add_reference(image(raw, "phantom_000"), labels(raw, "phantom_000"), [1, 2]) == [1, 2]
    return segmenter


def test_the_label_map_and_probabilities_come_back_in_the_query_geometry(liver_and_kidney, query, tmp_path):
    written = liver_and_kidney.predict_to_file(query, tmp_path / "out" / "query", save_probabilities=True)
    source, result = sitk.ReadImage(str(query)), sitk.ReadImage(written)
    assert result.GetSize() == source.GetSize() == (28, 30, 24)
    assert np.allclose(result.GetSpacing(), source.GetSpacing())
    assert np.allclose(result.GetOrigin(), source.GetOrigin())
    assert np.allclose(result.GetDirection(), source.GetDirection())
    saved = np.load(tmp_path / "out" / "query.npz")
    assert saved["labels"].tolist() == [1, 2] and saved["probabilities"].shape == (2, 24, 30, 28)
    assert saved["probabilities"].min() >= 0 and saved["probabilities"].max() <= 1
    label_map = sitk.GetArrayFromImage(result)
    assert np.array_equal(label_map, combine_tasks(saved["probabilities"], [1, 2]))
    assert (tmp_path / "out" / "query.pkl").is_file()


def test_a_labels_probabilities_do_not_depend_on_the_other_labels(model, raw, liver_and_kidney, query):
    every_label = InContextSegmenter(model, torch.device("cpu"))
    assert every_label.add_reference(image(raw, "phantom_000"), labels(raw, "phantom_000")) == [1, 2, 3, 4, 5, 6]
    _, alone = every_label.segment(query, labels=[1])
    _, with_kidney = liver_and_kidney.segment(query)
    _, with_all = every_label.segment(query)
    assert list(alone) == [1] and list(with_kidney) == [1, 2] and list(with_all) == [1, 2, 3, 4, 5, 6]
    # compared as logits: nnU-Net accumulates windows in float16 (steps of 0.004 at |logit| ~ 8)
    assert np.abs(logit(alone[1]) - logit(with_kidney[1])).max() < 0.02
    assert np.abs(logit(alone[1]) - logit(with_all[1])).max() < 0.02
    assert np.abs(logit(with_all[1]) - logit(with_all[5])).max() > 0.2  # the tasks do differ


def test_references_of_one_label_are_averaged(model, raw):
    first, second = InContextSegmenter(model), InContextSegmenter(model)
    first.add_reference(image(raw, "phantom_000"), labels(raw, "phantom_000"), [1])
    second.add_reference(image(raw, "phantom_002"), labels(raw, "phantom_002"), [1])
    one, other = first.task_tokens(), second.task_tokens()
    assert not torch.allclose(one, other)
    first.add_reference(image(raw, "phantom_002"), labels(raw, "phantom_002"), [1, 3])
    assert first.labels == [1, 3] and len(first.references[1]) == 2 and len(first.references[3]) == 1
    assert torch.allclose(first.task_tokens([1]), (one + other) / 2, atol=1e-6)
    second.add_reference(image(raw, "phantom_002"), labels(raw, "phantom_002"), [3])
    assert torch.allclose(first.task_tokens([3]), second.task_tokens([3]))  # one reference: its own tokens


class IntensityNetwork(nn.Module):
    """Stands in for the pretrained network where a test needs confident, predictable output: a
    task is the mean normalised intensity under the reference mask, and a query voxel belongs to
    it where its intensity lies within 0.3 of that mean."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))  # gives the segmenter a device to read

    def encode_tasks(self, reference, masks):
        mean = (reference[:, :1] * masks).flatten(2).sum(-1) / masks.flatten(2).sum(-1)  # (B, K)
        return mean[:, :, None, None, None]  # (B, K, stages=1, T=1, d=1)

    def segment(self, query, tokens):
        return 40 * (0.3 - (query[:, :1] - tokens[:, :, 0, 0, 0, None, None, None]).abs())  # (B, K, *S)

    average_tasks = staticmethod(lambda tokens: torch.stack(tokens).mean(0))


def components(label_map, label):
    """Connected components of a label, voxels touching by a corner included (as nnU-Net counts)."""
    return ndimage.label(label_map == label, structure=np.ones((3, 3, 3)))[1]


def test_largest_component_keeps_one_component_per_label(model, raw):
    stand_in = dataclasses.replace(model, network=IntensityNetwork())
    per_label = {}
    for keep_largest in (False, True):
        segmenter = InContextSegmenter(stand_in, largest_component=keep_largest)
        segmenter.add_reference(image(raw, "phantom_000"), labels(raw, "phantom_000"), [1, 5])
        label_map, _ = segmenter.segment(image(raw, "phantom_001"))
        per_label[keep_largest] = {label: components(label_map, label) for label in (1, 5)}
    assert per_label[False][5] > 1  # vertebrae: several bones
    assert per_label[True] == {1: 1, 5: 1}


def test_combining_tasks_thresholds_and_lets_the_most_probable_win():
    probabilities = np.array([[[0.9, 0.6, 0.2, 0.5]], [[0.7, 0.8, 0.1, 0.4]]])  # (K=2, 1, 4)
    assert combine_tasks(probabilities, [3, 7]).tolist() == [[3, 7, 0, 0]]


def test_keep_largest_components_leaves_other_labels_alone():
    label_map = np.zeros((1, 12), dtype=np.uint8)
    label_map[0, 0:2], label_map[0, 4:8], label_map[0, 10:12] = 1, 1, 2
    kept = keep_largest_components(label_map, [1, 2])
    assert kept[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 2, 2]


def test_a_reference_smaller_than_the_window_is_zero_padded(model, raw, tmp_path):
    box = (slice(10, 30), slice(10, 30), slice(10, 30))  # 20^3 voxels, the window is 32^3
    small_image, small_mask = tmp_path / "small_0000.nii.gz", tmp_path / "small.nii.gz"
    crop_image(image(raw, "phantom_000"), small_image, box)
    crop_image(labels(raw, "phantom_000"), small_mask, box)
    present = sorted(int(v) for v in np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(small_mask)))) if v > 0)
    segmenter = InContextSegmenter(model)
    assert segmenter.add_reference(small_image, small_mask) == present
    assert segmenter.task_tokens().shape[1] == len(present)


def test_bad_references_are_refused_naming_the_file(model, raw, tmp_path):
    segmenter = InContextSegmenter(model)
    mask = labels(raw, "phantom_000")
    moved = tmp_path / "moved.nii.gz"
    shifted = sitk.ReadImage(str(mask))
    shifted.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(shifted, str(moved))
    with pytest.raises(InContextInputError, match=r"moved\.nii\.gz and image .* differ in .*origin"):
        segmenter.add_reference(image(raw, "phantom_000"), moved)
    smaller = tmp_path / "smaller.nii.gz"
    crop_image(mask, smaller, (slice(0, 30), slice(0, 40), slice(0, 40)))
    with pytest.raises(InContextInputError, match=r"smaller\.nii\.gz has size"):
        segmenter.add_reference(image(raw, "phantom_000"), smaller)
    empty = tmp_path / "empty.nii.gz"
    blank = sitk.ReadImage(str(mask)) * 0
    sitk.WriteImage(blank, str(empty))
    with pytest.raises(InContextInputError, match=r"empty\.nii\.gz is empty"):
        segmenter.add_reference(image(raw, "phantom_000"), empty)
    with pytest.raises(InContextInputError, match=r"phantom_000\.nii\.gz holds labels \[1, 2, 3, 4, 5, 6\], not \[9\]"):
        segmenter.add_reference(image(raw, "phantom_000"), mask, [9])
    with pytest.raises(InContextInputError, match=r"phantom_000_0000\.nii\.gz: 2 image channel\(s\) given, .* 1"):
        segmenter.add_reference([image(raw, "phantom_000")] * 2, mask)
    with pytest.raises(FileNotFoundError, match="typo.nii.gz"):
        segmenter.add_reference(image(raw, "phantom_000"), tmp_path / "typo.nii.gz")
    assert segmenter.labels == []


def test_queries_need_references_and_known_labels(liver_and_kidney, model, query):
    with pytest.raises(InContextInputError, match="no reference given"):
        InContextSegmenter(model).segment(query)
    with pytest.raises(InContextInputError, match=r"labels \[4\] have no reference; the references give \[1, 2\]"):
        liver_and_kidney.segment(query, labels=[2, 4])
    with pytest.raises(InContextInputError, match="query_0000.nii.gz: 2 image channel"):
        liver_and_kidney.segment([query, query])


def test_image_cases_follow_nnunet_naming(tmp_path):
    for name in ("a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz", "b_0001.nii.gz", "notes.txt"):
        (tmp_path / name).touch()
    cases = image_cases(tmp_path, ".nii.gz", 2)
    assert {case: [f.split("/")[-1] for f in files] for case, files in cases.items()} == {
        "a": ["a_0000.nii.gz", "a_0001.nii.gz"], "b": ["b_0000.nii.gz", "b_0001.nii.gz"]}
    with pytest.raises(ValueError, match=r"case a has 2 image file\(s\)"):
        image_cases(tmp_path, ".nii.gz", 1)


def test_image_cases_take_files_and_name_what_is_missing(tmp_path):
    (tmp_path / "scan.nii.gz").touch()
    (tmp_path / "b_0000.nii.gz").touch()
    assert list(image_cases([tmp_path / "scan.nii.gz", tmp_path / "b_0000.nii.gz"], ".nii.gz", 1)) == ["b", "scan"]
    with pytest.raises(FileNotFoundError, match="absent.nii.gz"):
        image_cases([tmp_path / "absent.nii.gz"], ".nii.gz", 1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="CASE_0000.nii.gz"):
        image_cases(tmp_path / "empty", ".nii.gz", 1)


def test_command_line_segments_a_folder(mass_pretraining, raw, query, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(query, inputs / "case_0000.nii.gz")
    incontext_main(["-m", str(mass_pretraining["model_folder"]), "-ref", str(image(raw, "phantom_000")),
                    str(labels(raw, "phantom_000")), "-ref", str(image(raw, "phantom_002")),
                    str(labels(raw, "phantom_002")), "-i", str(inputs), "-o", str(tmp_path / "out"),
                    "--labels", "1", "5", "--save_probabilities", "--largest_component", "-device", "cpu"])
    result = sitk.ReadImage(str(tmp_path / "out" / "case.nii.gz"))
    assert result.GetSize() == sitk.ReadImage(str(query)).GetSize()
    assert set(np.unique(sitk.GetArrayFromImage(result))) <= {0, 1, 5}
    assert np.load(tmp_path / "out" / "case.npz")["labels"].tolist() == [1, 5]


def test_command_line_errors_name_the_file(mass_pretraining, raw, query, tmp_path):
    with pytest.raises(SystemExit, match=r"nnUNetv2_mass_incontext: error: .*missing\.nii\.gz"):
        incontext_main(["-m", str(mass_pretraining["model_folder"]), "-ref", str(image(raw, "phantom_000")),
                        str(tmp_path / "missing.nii.gz"), "-i", str(query), "-o", str(tmp_path), "-device", "cpu"])
