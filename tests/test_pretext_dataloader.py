"""MASSPretextDataLoader on a real (tiny) nnU-Net-preprocessed phantom dataset with generated masks."""
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import preprocessed_phantoms
from nnunet_mass.masks.store import MaskFormatError, mask_folder, open_mask_stack
from nnunet_mass.pretext.dataloader import MASSPretextDataLoader, require_masks
from nnunet_mass.pretext.settings import PretextSettings

DATASET_ID, DATASET = 103, "Dataset103_PretextPhantoms"
CASES = ["phantom_000", "phantom_001", "phantom_002"]
PATCH = (24, 24, 24)
MIN_VOXELS = PretextSettings().min_reference_voxels


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Preprocessed phantoms with classical masks (hundreds per case) and, in a second folder,
    masks imported from the label maps only (a handful per case: fewer than K)."""
    root = tmp_path_factory.mktemp("pretext")

    def make_masks():
        from nnunet_mass.masks.dataset_masks import generate_dataset_masks

        raw = root / "nnUNet_raw" / DATASET
        assert generate_dataset_masks(DATASET_ID, from_labels=str(raw / "labelsTr"), mix_generated=False).ok
        masks = mask_folder(root / "nnUNet_preprocessed" / DATASET, "nnUNetPlans_3d_fullres")
        masks.rename(masks.with_name("labels_only_masks"))
        assert generate_dataset_masks(DATASET_ID).ok

    preprocessed_phantoms(root, DATASET_ID, DATASET.split("_", 1)[1], num_cases=3, seed=5, shape=(32, 40, 40),
                          then=make_masks)
    preprocessed = root / "nnUNet_preprocessed" / DATASET
    return {"preprocessed": preprocessed, "data": preprocessed / "nnUNetPlans_3d_fullres",
            "masks": preprocessed / "nnUNetPlans_3d_fullres_mass_masks", "labels": preprocessed / "labels_only_masks"}


def make_loader(dataset, masks=None, patch=PATCH, batch_size=2, **kwargs) -> MASSPretextDataLoader:
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = PlansManager(str(dataset["preprocessed"] / "nnUNetPlans.json"))
    label_manager = plans.get_label_manager(json.loads((dataset["preprocessed"] / "dataset.json").read_text()))
    data = nnUNetDatasetBlosc2(str(dataset["data"]))
    return MASSPretextDataLoader(data, batch_size, patch, label_manager, masks or dataset["masks"], **kwargs)


def check_batch(batch: dict, batch_size: int, patch, num_masks: int = 13) -> None:
    """Shapes, dtypes, and validity flags that agree with the mask contents."""
    assert batch["reference"].shape == batch["query"].shape == (batch_size, 1, *patch)
    assert batch["reference"].dtype == batch["query"].dtype == torch.float32
    assert batch["reference_masks"].shape == batch["query_masks"].shape == (batch_size, num_masks, *patch)
    assert batch["reference_masks"].dtype == batch["query_masks"].dtype == torch.bool
    assert batch["valid"].shape == (batch_size, num_masks) and batch["valid"].dtype == torch.bool
    assert len(batch["keys"]) == batch_size and set(batch["keys"]) <= set(CASES)
    reference_voxels = batch["reference_masks"].flatten(2).sum(-1)  # (B, K)
    # a task is valid exactly when its augmented reference shows enough of it (padding is empty)
    assert torch.equal(batch["valid"], reference_voxels >= MIN_VOXELS)
    full = batch["reference_masks"].flatten(2).all(-1) & batch["query_masks"].flatten(2).all(-1)
    assert torch.all(full.sum(-1) >= 1)  # the whole-FOV task is in every sample


def test_batches_from_classical_masks(dataset):
    loader = make_loader(dataset)
    valid_counts = []
    for _ in range(6):
        batch = loader.generate_train_batch()
        check_batch(batch, 2, PATCH)
        valid_counts += batch["valid"].sum(-1).tolist()
    assert max(valid_counts) == 13  # hundreds of masks per case: usually every channel is a task
    assert torch.isfinite(batch["reference"]).all() and batch["reference"].std() > 0


def test_fewer_masks_than_channels_pad_with_invalid_channels(dataset):
    most = max(len(open_mask_stack(dataset["labels"], case)) for case in CASES)
    assert most < 12  # the label maps hold a handful of structures
    loader = make_loader(dataset, masks=dataset["labels"], batch_size=3)
    tasks = []
    for _ in range(4):
        batch = loader.generate_train_batch()
        check_batch(batch, 3, PATCH)
        padding = ~batch["reference_masks"].flatten(2).any(-1) & ~batch["query_masks"].flatten(2).any(-1)
        assert torch.all(padding.sum(-1) >= 13 - most - 1)  # at least K - (masks + FOV) empty channels
        tasks += batch["valid"].sum(-1).tolist()
    assert max(tasks) >= 2  # label masks do become tasks beside the whole-FOV one


def test_2d_patches(dataset):
    batch = make_loader(dataset, patch=(24, 28)).generate_train_batch()
    check_batch(batch, 2, (24, 28))


def test_old_index_without_bboxes_still_loads(dataset, tmp_path):
    plain = tmp_path / "plain_masks"
    shutil.copytree(dataset["masks"], plain)
    for index_file in plain.glob("*.json"):
        index = json.loads(index_file.read_text())
        for entry in index["masks"]:
            entry.pop("bbox")
        index_file.write_text(json.dumps(index))
    loader = make_loader(dataset, masks=plain, seed=7)
    assert not loader.mask_stack("phantom_000", (1, 32, 40, 40)).has_bboxes
    boxed = make_loader(dataset, seed=7).generate_train_batch()
    counted = loader.generate_train_batch()
    for name in ("reference", "reference_masks", "query", "query_masks", "valid"):
        assert torch.equal(boxed[name], counted[name]), name  # same draws whichever way presence is tested


def test_seeded_loaders_repeat_and_sampling_probabilities_hold(dataset):
    first = make_loader(dataset, seed=3).generate_train_batch()
    again = make_loader(dataset, seed=3).generate_train_batch()
    other = make_loader(dataset, seed=4).generate_train_batch()
    assert first["keys"] == again["keys"]
    assert all(torch.equal(first[k], again[k]) for k in ("reference", "query_masks", "valid"))
    assert not torch.equal(first["reference"], other["reference"])
    only_last = make_loader(dataset, batch_size=4, sampling_probabilities=[0, 0, 1])
    assert only_last.generate_train_batch()["keys"] == ["phantom_002"] * 4
    only_first = make_loader(dataset, batch_size=4, seed=1, sampling_probabilities=[1, 0, 0])
    assert only_first.generate_train_batch()["keys"] == ["phantom_000"] * 4


def test_pickled_loader_draws_on_its_own(dataset):
    loader = make_loader(dataset)
    loader.generate_train_batch()  # files open, generator created
    clone = pickle.loads(pickle.dumps(loader))
    assert len(clone._stacks) == 0 and clone._rng is None
    check_batch(clone.generate_train_batch(), 2, PATCH)


def test_runs_in_nnunets_multiprocess_augmenter(dataset):
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter

    augmenter = NonDetMultiThreadedAugmenter(make_loader(dataset), None, num_processes=1, num_cached=2)
    try:
        batches = [next(augmenter) for _ in range(3)]
    finally:
        augmenter._finish()
    for batch in batches:
        check_batch(batch, 2, PATCH)
    assert not torch.equal(batches[0]["reference"], batches[1]["reference"])


def test_require_masks_names_the_command(dataset, tmp_path):
    require_masks(dataset["masks"], CASES, DATASET, "3d_fullres", "nnUNetPlans", data_folder=dataset["data"])
    partial = tmp_path / "partial"
    shutil.copytree(dataset["masks"], partial)
    (partial / "phantom_001.json").unlink()
    with pytest.raises(FileNotFoundError) as missing:
        require_masks(partial, CASES, DATASET, "3d_fullres", "nnUNetPlans")
    message = str(missing.value)
    assert "1 of 3 case(s) have no masks" in message and "phantom_001" in message and "phantom_000" not in message
    assert f"nnUNetv2_mass_generate_masks -d {DATASET} -c 3d_fullres -p nnUNetPlans" in message
    with pytest.raises(FileNotFoundError, match="3 of 3"):
        require_masks(tmp_path / "nowhere", CASES, DATASET, "3d_fullres", "nnUNetPlans")

    import blosc2

    stale = tmp_path / "stale"
    shutil.copytree(dataset["masks"], stale)
    (stale / "phantom_002.b2nd").unlink()
    blosc2.asarray(np.zeros((1, 30, 40, 40), dtype=np.uint16), urlpath=str(stale / "phantom_002.b2nd"))
    with pytest.raises(MaskFormatError, match=r"phantom_002\. Regenerate them: nnUNetv2_mass_generate_masks .*--overwrite"):
        require_masks(stale, CASES, DATASET, "3d_fullres", "nnUNetPlans", data_folder=Path(dataset["data"]))


def test_opened_masks_are_kept_for_recent_cases_only(dataset, monkeypatch):
    from nnunet_mass.pretext import dataloader

    monkeypatch.setattr(dataloader, "MASK_CACHE_SIZE", 2)
    loader = make_loader(dataset, batch_size=6)
    for _ in range(3):
        loader.generate_train_batch()
        assert len(loader._stacks) <= 2
