"""nnunet-mass: MASS mask-guided self-supervised learning as an nnU-Net v2 plugin.

Importing the package is cheap on purpose: the interpreter-start hook imports it.
"""

__version__ = "0.1.0"
