"""Sharing a MASS pretraining: bundle zips (export, import) and adopting a pretrained model's plans
for any number of fine-tuning datasets.

Nothing heavy is imported here: `training.transfer` asks `bundle.is_bundle` on every
`-pretrained_weights` load.
"""
