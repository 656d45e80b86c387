"""Can a raw dataset be fine-tuned from a pretrained model? Checked before any work is done.

What must match is what the pretrained network consumes: the number of input channels,
what each channel is (nnU-Net picks the intensity normalisation from the channel name,
and the weights learned on that normalisation), and 3D volumes for a 3D configuration.
The labels do not matter: the segmentation layers start fresh.
"""
import contextlib
import copy
import io
from dataclasses import dataclass, field
from pathlib import Path

from nnunet_mass.bundles.source import PretrainedSource
from nnunet_mass.raw_datasets import RawDatasetError, find_raw_dataset


class AdoptionError(RuntimeError):
    """The dataset cannot adopt the model (or the adoption failed); nothing was written."""


@dataclass(frozen=True)
class TargetDataset:
    dataset_id: int
    name: str
    raw_folder: Path
    dataset_json: dict


@dataclass
class Compatibility:
    reader_writer: str                     # nnU-Net's reader/writer class for the target's images
    warnings: list[str] = field(default_factory=list)


def load_target(dataset) -> TargetDataset:
    """The raw dataset `dataset` (id or name) in $nnUNet_raw."""
    from nnunetv2.utilities.dataset_name_id_conversion import convert_dataset_name_to_id

    try:
        raw = find_raw_dataset(dataset)
    except RawDatasetError as error:
        raise AdoptionError(f"{error}; adoption needs the raw dataset in nnUNet_raw") from None
    return TargetDataset(convert_dataset_name_to_id(raw.name), raw.name, raw.folder, raw.dataset_json)


def check_compatibility(source: PretrainedSource, target: TargetDataset) -> Compatibility:
    """The reader/writer for the target's images and any warnings; AdoptionError listing every problem."""
    errors, warnings = _dataset_json_problems(target), []
    if not errors:
        errors, warnings = channel_problems(source, target)
    reader_writer = None
    if not errors:
        image_errors, reader_writer = image_problems(source, target)
        errors += image_errors
    if errors:
        listing = "\n".join(f"  - {e}" for e in errors)
        raise AdoptionError(f"{target.name} cannot be fine-tuned from {source.weights}:\n{listing}\n"
                            f"Nothing was written.")
    return Compatibility(reader_writer, warnings)


def channel_names(dataset_json: dict) -> list[str]:
    names = dataset_json.get("channel_names", dataset_json.get("modality", {}))
    return [str(names[key]) for key in sorted(names, key=int)]


def channel_problems(source: PretrainedSource, target: TargetDataset) -> tuple[list[str], list[str]]:
    """Errors for channels the weights cannot read, warnings for renamed ones that normalise alike."""
    from nnunetv2.preprocessing.normalization.map_channel_name_to_normalization import get_normalization_scheme

    pretrained, own = channel_names(source.dataset_json), channel_names(target.dataset_json)
    if len(pretrained) != len(own):
        return [f"the pretrained network takes {len(pretrained)} input channel(s) {pretrained}, {target.name} has "
                f"{len(own)} {own}. The input layer is transferred, so the channels must correspond one to one: "
                f"use a model pretrained on the same channels"], []
    schemes = _configuration(source).normalization_schemes
    errors, warnings = [], []
    for index, (theirs, ours, scheme) in enumerate(zip(pretrained, own, schemes)):
        our_scheme = get_normalization_scheme(ours).__name__
        if our_scheme != scheme:
            errors.append(f"channel {index}: the pretraining saw '{theirs}' ({scheme}), {target.name} has '{ours}' "
                          f"({our_scheme} in nnU-Net). The weights learned {scheme} intensities. Use a model "
                          f"pretrained on this modality; only if channel {index} really is {theirs}, rename it "
                          f"'{theirs}' in {target.raw_folder / 'dataset.json'}")
        elif theirs.casefold() != ours.casefold():
            warnings.append(f"channel {index} is '{ours}' here and '{theirs}' in the pretraining; both use {scheme}, "
                            f"so the pretraining's normalisation applies")
    return errors, warnings


def image_problems(source: PretrainedSource, target: TargetDataset) -> tuple[list[str], str | None]:
    """Can nnU-Net read the target's images, and are they volumes where the configuration is 3D?"""
    dimensions = len(_configuration(source).patch_size)
    ending = target.dataset_json["file_ending"]
    if dimensions == 3 and ending.lower() in _two_d_only_endings():
        return [_flat_message(source, target, f"file_ending {ending} is a 2D image format")], None
    images = _first_case_images(target)
    if images is None:
        return [f"{target.name} has no training case with file ending {ending} in imagesTr"], None
    reader_writer, problem = _reader_writer(target, images[0])
    if problem:
        return [problem], None
    try:
        data, _ = reader_writer().read_images(images)
    except Exception as error:  # readers raise anything from RuntimeError to nibabel's own errors
        return [f"{images[0]} cannot be read with {reader_writer.__name__}: {error}"], None
    if dimensions == 3 and 1 in data.shape[1:]:
        return [_flat_message(source, target, f"{Path(images[0]).name} is 2D (shape {list(data.shape[1:])})")], None
    return [], reader_writer.__name__


def _dataset_json_problems(target: TargetDataset) -> list[str]:
    content = target.dataset_json
    missing = [key for key in ("file_ending",) if key not in content]
    if "channel_names" not in content and "modality" not in content:
        missing.append("channel_names")
    return [f"{target.raw_folder / 'dataset.json'} lacks {', '.join(missing)}"] if missing else []


def _configuration(source: PretrainedSource):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    return PlansManager(source.plans).get_configuration(source.configuration)


def _flat_message(source: PretrainedSource, target: TargetDataset, what: str) -> str:
    return (f"{what}, but the pretrained configuration {source.configuration} is 3D. MASS pretrains 3D networks: "
            f"fine-tune on 3D volumes, or train nnU-Net's 2d configuration on {target.name} without pretraining")


def _two_d_only_endings() -> set[str]:
    """File endings only nnU-Net's 2D natural-image reader takes (.png, .bmp)."""
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
    from nnunetv2.imageio.reader_writer_registry import LIST_OF_IO_CLASSES

    three_d = {e for io_class in LIST_OF_IO_CLASSES if io_class is not NaturalImage2DIO
               for e in io_class.supported_file_endings}
    return set(NaturalImage2DIO.supported_file_endings) - three_d


def _first_case_images(target: TargetDataset) -> list[str] | None:
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    # nnU-Net's listing rewrites a "dataset" section in place: give it a copy
    cases = get_filenames_of_train_images_and_targets(str(target.raw_folder), copy.deepcopy(target.dataset_json))
    return cases[sorted(cases)[0]]["images"] if cases else None


def _reader_writer(target: TargetDataset, example: str):
    """nnU-Net's reader/writer choice, as `nnUNetv2_move_plans_between_datasets` makes it."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):  # it prints every failed attempt
            return determine_reader_writer_from_dataset_json(target.dataset_json, example,
                                                             allow_nonmatching_filename=True, verbose=False), None
    except RuntimeError:
        return None, (f"no nnU-Net reader opens {example} (file_ending {target.dataset_json['file_ending']}); "
                      f"convert the images to .nii.gz")
