"""Train: the recipe (:mod:`components.train.recipe`, no TensorFlow), the model zoo
(:mod:`components.train.models`), input pipelines (:mod:`components.train.data`), fitting
with resumable phases (:mod:`components.train.fit`), the training step
(:mod:`components.train.train`), augmentation (:mod:`components.train.augment`), test-time
augmentation (:mod:`components.train.tta`), calibration (:mod:`components.train.calibrate`)
and selection or ensembles (:mod:`components.train.ensemble`).

Import from the submodules: this package imports nothing, so that reading a recipe does not
load TensorFlow.
"""
