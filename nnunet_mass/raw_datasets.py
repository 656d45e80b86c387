"""nnU-Net raw datasets looked up by id or name, with their dataset.json read.

Pooling, adoption and in-context evaluation all start from a raw dataset; each wraps
RawDatasetError in its own error type and adds the checks of its own use.
"""
import json
import os
from dataclasses import dataclass
from pathlib import Path


class RawDatasetError(ValueError):
    pass


@dataclass(frozen=True)
class RawDataset:
    name: str  # DatasetXXX_Name
    folder: Path
    dataset_json: dict


def find_raw_dataset(dataset, raw_root=None) -> RawDataset:
    """The raw dataset `dataset` (an id like 11 or a name like Dataset011_X) in `raw_root`
    (default: $nnUNet_raw, read now)."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name  # heavy import

    raw_root = raw_root or os.environ.get("nnUNet_raw")
    if not raw_root:
        raise RawDatasetError("nnUNet_raw is not set: export nnUNet_raw=/path/to/nnUNet_raw")
    try:
        name = str(maybe_convert_to_dataset_name(dataset))
    except (RuntimeError, ValueError) as error:
        raise RawDatasetError(f"dataset {dataset} not found: {error}") from None
    json_file = Path(raw_root) / name / "dataset.json"
    if not json_file.is_file():
        raise RawDatasetError(f"{json_file} not found (is {name} in nnUNet_raw={raw_root}?)")
    try:
        dataset_json = json.loads(json_file.read_text())
    except ValueError as error:
        raise RawDatasetError(f"{json_file} is not a valid nnU-Net dataset.json (invalid JSON: {error})") from None
    if not isinstance(dataset_json, dict):
        raise RawDatasetError(f"{json_file} is not a valid nnU-Net dataset.json (not a JSON object)")
    return RawDataset(name, json_file.parent, dataset_json)
