"""Train: the model zoo (:mod:`components.train.models`) and the training step."""

from components.train.models import MODEL_BUILDERS, build_model
from components.train.train import TrainConfig, select_best, train

__all__ = ["MODEL_BUILDERS", "TrainConfig", "build_model", "select_best", "train"]
