"""Synthetic 3D abdominal phantoms (CT-like and MR-like) for the demo and the tests.

layout.py samples a grid-free anatomy in millimetres, anatomy.py rasterises it into tissue
and label maps, appearance.py turns tissues into intensities, phantom.py joins the two for
one case and dataset.py writes an nnU-Net raw dataset. Arrays are (z, y, x) throughout.
"""
from nnunet_mass.phantoms.anatomy import PHANTOM_LABELS
from nnunet_mass.phantoms.appearance import MODALITIES
from nnunet_mass.phantoms.dataset import case_rng, phantom_geometry, write_phantom_dataset
from nnunet_mass.phantoms.phantom import make_phantom

__all__ = ["MODALITIES", "PHANTOM_LABELS", "case_rng", "make_phantom", "phantom_geometry", "write_phantom_dataset"]
