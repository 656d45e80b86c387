"""A synthetic classification task on the phantoms: does the liver hold lesions or not?

Both classes draw their anatomy and appearance from the same generator calls, so the only
systematic difference between them is the lesions: a negative case is the positive case
of the same generator state with its lesion voxels painted as liver. `lesion_scale`
enlarges the lesions (radius factor) to make the task easier; at 1 the largest lesion
is about 1-2 ml.
"""
import csv
import dataclasses
import json
from pathlib import Path

import numpy as np

from nnunet_mass.phantoms.anatomy import Tissue, rasterize
from nnunet_mass.phantoms.appearance import render
from nnunet_mass.phantoms.dataset import case_rng, write_image
from nnunet_mass.phantoms.layout import sample_layout
from nnunet_mass.phantoms.phantom import check_phantom_args

LABELS_FILE = "labels.csv"


def lesion_phantom(rng: np.random.Generator, has_lesion: bool, lesion_scale: float = 1.0, modality: str = "CT",
                   shape=(64, 64, 64), spacing=(2.5, 2.0, 2.0)) -> np.ndarray:
    """float32 image (z, y, x) of one phantom with or without its liver lesions."""
    modality, shape, spacing = check_phantom_args(modality, shape, spacing)
    if lesion_scale <= 0:
        raise ValueError(f"lesion_scale must be > 0, got {lesion_scale}")
    layout = sample_layout(rng)
    lesions = tuple(dataclasses.replace(e, semi_axes=e.semi_axes * lesion_scale) for e in layout.lesions)
    tissue = rasterize(dataclasses.replace(layout, lesions=lesions), shape, spacing)
    if not has_lesion:
        tissue[tissue == Tissue.LESION] = Tissue.LIVER
    return render(rng, tissue, spacing, modality)


def write_lesion_classification_set(folder, num_cases: int, seed: int = 0, lesion_scale: float = 1.0,
                                    shape=(64, 64, 64), spacing=(2.5, 2.0, 2.0), case_prefix: str = "case") -> dict:
    """`folder`/images/<case>_0000.nii.gz (CT) and `folder`/labels.csv (`case,label`, 1 = lesions).

    Classes alternate (even cases positive), so any count is balanced to within one case;
    case i depends only on (seed, i). Returns {case: label}.
    """
    folder = Path(folder)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    labels = {}
    for i in range(num_cases):
        case = f"{case_prefix}_{i:03d}"
        labels[case] = int(i % 2 == 0)
        image = lesion_phantom(case_rng(seed, i), bool(labels[case]), lesion_scale, "CT", shape, spacing)
        write_image(image, images / f"{case}_0000.nii.gz", spacing)
    with open(folder / LABELS_FILE, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case", "label"])
        writer.writerows(labels.items())
    settings = {"seed": seed, "lesion_scale": lesion_scale, "shape_zyx": list(shape), "spacing_zyx": list(spacing)}
    (folder / "generator.json").write_text(json.dumps(settings, indent=1))
    return labels
