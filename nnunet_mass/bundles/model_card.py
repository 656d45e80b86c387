"""MODEL_CARD.md of a pretrained-model bundle: what a person needs to judge the model at a glance.

Everything comes from files the pretraining already wrote: dataset.json (which datasets
were pooled, through `mass_case_sources`), plans.json (network, patch size, spacing),
the checkpoint's `mass` metadata (iterations, K, crop size) and validation/summary.json
(in-context Dice at the end), so the card cannot disagree with the bundle it describes.
"""
from collections import Counter

from nnunet_mass.bundles.compatibility import channel_names
from nnunet_mass.unlabeled.pool import SOURCES_KEY


def model_card(identity: dict, dataset_json: dict, plans: dict, metadata: dict, summary: dict | None) -> str:
    configuration = plans["configurations"].get(identity["configuration"], {})
    lines = [f"# MASS pretrained model: {identity['dataset_name']}", "",
             f"Trainer `{identity['trainer_name']}`, plans `{identity['plans_name']}`, configuration "
             f"`{identity['configuration']}`, fold {identity['fold']}, checkpoint `{identity['checkpoint']}`.", "",
             "## Pretraining data", ""]
    lines += _data_lines(dataset_json)
    lines += ["", "## Pretraining", ""]
    lines += _training_lines(metadata, summary)
    lines += ["", "## Network and preprocessing (the fine-tuning plans copy these)", ""]
    lines += _plans_lines(plans, configuration)
    lines += ["", "## Versions", "",
              f"- trained with nnunet-mass {metadata.get('plugin_version', 'unknown')}, exported with nnunet-mass "
              f"{identity['plugin_version']}, nnU-Net {identity['nnunet_version']}, torch {identity['torch_version']}",
              "", "## Use", "",
              "- install: `nnUNetv2_mass_import_pretrained <this zip>`",
              "- fine-tune on your dataset: `nnUNetv2_mass_adopt -m <this zip> -d <dataset id>`, then the "
              "`nnUNetv2_train ... -pretrained_weights <this zip>` command it prints", ""]
    return "\n".join(lines)


def _data_lines(dataset_json: dict) -> list[str]:
    channels = channel_names(dataset_json)
    lines = [f"- channels: {', '.join(f'{index}: {name}' for index, name in enumerate(channels))}"]
    sources = dataset_json.get(SOURCES_KEY)
    if sources:
        counts = Counter(sources.values())
        lines.append(f"- pooled from {len(counts)} dataset(s), {len(sources)} case(s) in all:")
        lines += [f"  - {name}: {count} case(s)" for name, count in sorted(counts.items())]
    else:
        lines.append(f"- one dataset ({dataset_json.get('name', 'unnamed')}), "
                     f"{dataset_json.get('numTraining', 'unknown number of')} training case(s); not a pool")
    return lines


def _training_lines(metadata: dict, summary: dict | None) -> list[str]:
    pretext = metadata.get("pretext", {})
    crop = metadata.get("crop_size")
    lines = [f"- iterations: {metadata.get('iterations_done', 'unknown')}",
             f"- masks per sample (K): {pretext.get('num_masks', 'unknown')}",
             f"- crop size (voxels, z y x): {'x'.join(map(str, crop)) if crop else 'unknown'}"]
    if summary and summary.get("mean_dice") is not None:
        lines.append(f"- in-context Dice at the end: {summary['mean_dice']:.4f} over {summary.get('num_tasks', '?')} "
                     f"tasks ({summary.get('metric', 'validation/summary.json')})")
    else:
        lines.append("- in-context Dice at the end: not recorded (no validation/summary.json)")
    return lines


def _plans_lines(plans: dict, configuration: dict) -> list[str]:
    architecture = configuration.get("architecture", {})
    features = architecture.get("arch_kwargs", {}).get("features_per_stage")
    return [f"- network: {architecture.get('network_class_name', 'unknown')}"
            + (f", {len(features)} stages, {features[0]}-{features[-1]} features" if features else ""),
            f"- patch size: {configuration.get('patch_size')}, spacing (mm): {configuration.get('spacing')}, "
            f"transpose_forward: {plans.get('transpose_forward')}",
            f"- normalisation: {configuration.get('normalization_schemes')}"]
