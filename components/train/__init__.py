"""Train: the model zoo (:mod:`components.train.models`), the training step and its recipe,
augmentation (:mod:`components.train.augment`) and test-time augmentation
(:mod:`components.train.tta`)."""

from components.train.augment import build_augmentation, with_augmentation
from components.train.models import (
    MODEL_BUILDERS,
    build_model,
    freeze_base,
    pretrained_base,
    unfreeze_base,
)
from components.train.train import (
    TrainConfig,
    builder_kwargs,
    checkpoint_dir,
    select_best,
    train,
)
from components.train.tta import TTA_MODES, with_tta

__all__ = ["MODEL_BUILDERS", "TTA_MODES", "TrainConfig", "build_augmentation", "build_model",
           "builder_kwargs", "checkpoint_dir", "freeze_base", "pretrained_base", "select_best",
           "train", "unfreeze_base", "with_augmentation", "with_tta"]
