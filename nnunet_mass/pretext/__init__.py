"""The MASS pretext task on nnU-Net's data machinery.

One sample: a case drawn by nnU-Net's loader, two overlapping windows around a random anchor
(`windows`), the masks present in the first window (`selection`), a weak augmentation for the
reference view and a strong one for the query view (`augmentation`), all run per sample
inside nnU-Net's augmenter workers by `dataloader.MASSPretextDataLoader`. `settings` holds
the knobs. Submodules are imported on demand: this package imports nothing heavy.
"""
