"""The fine-tuning dataset's plans: the pretraining's plans, renamed, with the target's own facts.

Everything that shapes the network or the data it sees is kept: architecture, patch
size, transpose, target spacing, resampling and normalisation schemes. So the weights
load into the fine-tuning network key for key, whatever the target's own planner would
have chosen. Replaced, as `nnUNetv2_move_plans_between_datasets` does: dataset and plans
names, data identifiers, the image reader/writer. Replaced beyond that: the foreground
intensity statistics, which CTNormalization clips and scales with, now come from the
target's fingerprint. `mass_adopted_from` records where the plans came from.
"""
import copy
import re

from nnunet_mass.bundles.compatibility import AdoptionError
from nnunet_mass.bundles.source import PretrainedSource

ADOPTED_KEY = "mass_adopted_from"
_PLANS_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def default_plans_name(source: PretrainedSource) -> str:
    """<pretraining plans>_MASS<pretraining dataset id>: never a plans name the target's own planner writes."""
    from nnunetv2.utilities.dataset_name_id_conversion import convert_dataset_name_to_id

    return f"{source.plans_name}_MASS{convert_dataset_name_to_id(source.dataset_name):03d}"


def check_plans_name(name: str) -> None:
    if not _PLANS_NAME.match(name) or "__" in name:
        raise AdoptionError(f"plans name {name!r} may only contain letters, digits, '_', '.' and '-', and no '__' "
                            f"(nnU-Net splits result folder names at '__')")


def adopted_plans(source: PretrainedSource, target_name: str, plans_name: str, fingerprint: dict,
                  reader_writer: str, pretraining_intensities: bool = False) -> dict:
    plans = copy.deepcopy(source.plans)
    plans["dataset_name"] = target_name
    plans["plans_name"] = plans_name
    plans["image_reader_writer"] = reader_writer
    for configuration in plans["configurations"].values():
        if "data_identifier" in configuration:
            configuration["data_identifier"] = renamed_identifier(configuration["data_identifier"],
                                                                  source.plans_name, plans_name)
    # By default every channel's statistics are the target's: schemes other than CTNormalization
    # ignore them, and keeping another dataset's numbers would only mislead whoever reads the
    # plans. But the target's come from its labeled foreground (a liver-only dataset clips to
    # liver HU), so `pretraining_intensities` keeps the window the pretrained weights saw.
    if not pretraining_intensities:
        plans["foreground_intensity_properties_per_channel"] = copy.deepcopy(
            fingerprint["foreground_intensity_properties_per_channel"])
    plans[ADOPTED_KEY] = {"dataset_name": source.dataset_name, "plans_name": source.plans_name,
                          "configuration": source.configuration, "weights": str(source.weights)}
    return plans


def renamed_identifier(identifier: str, old_plans_name: str, new_plans_name: str) -> str:
    """nnU-Net's convention: data identifiers start with the plans name, so the data of two plans never mix."""
    if identifier.startswith(old_plans_name):
        return new_plans_name + identifier[len(old_plans_name):]
    return f"{new_plans_name}_{identifier}"
