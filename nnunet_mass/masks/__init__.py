"""Class-agnostic mask proposals on nnU-Net-preprocessed data (the raw material of MASS)."""
