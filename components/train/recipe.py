"""The training recipe: one object, :class:`TrainConfig`, from profile to pod.

A setting is one field here, with its default, its check (in ``__post_init__``) and its help
text (the field's ``metadata``). Everything else follows from the fields: the profiles hold
overrides of them, ``fer-pipeline run|compile|submit`` builds its recipe flags from them and
validates the whole recipe before anything runs, the pipeline carries the recipe as one
typed ``recipe`` parameter (a dict), and the train component rebuilds it with
:func:`variant_config`. The fields in :data:`VARIANT_FIELDS` are set per train task by the
pipeline (which architecture, its builder arguments, its checkpoints, the run's seed).

This module imports neither TensorFlow nor Keras: the command line validates a recipe in
milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("plateau", "cosine")
CLASS_BALANCE = ("weights", "sampling", "none")
TTA_MODES = ("none", "flip", "centre", "crops")
# Named augmentation recipes; each maps to components.train.augment.build_augmentation()
# arguments.
AUGMENTATION_PRESETS: dict[str, dict[str, float]] = {
    "none": {},
    "light": {"rotation": 10.0, "translation": 0.08, "zoom": 0.08},
    "standard": {"rotation": 15.0, "translation": 0.1, "zoom": 0.15, "shear": 0.1,
                 "brightness": 0.15, "contrast": 0.2, "erasing": 0.25},
}
# Set per train task by the pipeline, not by the recipe.
VARIANT_FIELDS = ("architecture", "seed", "model_kwargs", "checkpoint_dir",
                  "teacher_predictions")


class RecipeError(ValueError):
    """A recipe value is invalid; ``field`` names the setting, the message says why."""

    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.field = name


def setting(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A recipe field: its default, the help text the command line shows, and for a string
    its allowed values."""
    meta = {"help": help, "choices": choices}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """How to train one network. Defaults: the seed recipe (Adam at a fixed rate halved on
    plateaus, sparse cross-entropy, class weights, no augmentation)."""

    architecture: str = setting("baseline_cnn", "the network to build")
    epochs: int = setting(30, "epochs to train")
    batch_size: int = setting(64, "faces per training batch")
    learning_rate: float = setting(1e-3, "peak learning rate")
    seed: int = setting(42, "seed of weights, shuffling and augmentation")
    early_stopping_patience: int = setting(
        6, "plateau schedule: stop after this many epochs without a lower val loss")
    reduce_lr_patience: int = setting(
        3, "plateau schedule: halve the rate after this many epochs without a lower val loss")
    checkpoint_dir: str | None = setting(
        None, "per-epoch checkpoints, so a killed run resumes (None: a temporary directory)")
    model_kwargs: dict[str, Any] = setting({}, "the architecture's builder arguments")
    optimizer: str = setting("adam", "adam, adamw, or sgd (Nesterov momentum 0.9)",
                             OPTIMIZERS)
    schedule: str = setting("plateau", "plateau: halve on val-loss plateaus (and stop early); "
                            "cosine: cosine decay to 0, every epoch run", SCHEDULES)
    warmup_epochs: int = setting(0, "cosine schedule: linear warm-up over the first epochs")
    weight_decay: float | None = setting(
        None, "decoupled weight decay of kernels (default: the optimizer's; AdamW 0.004)")
    label_smoothing: float = setting(0.0, "> 0: one-hot targets smoothed by this much")
    class_balance: str = setting("weights", "class weights (the class-weight artifact), "
                                 "balanced sampling, or neither", CLASS_BALANCE)
    augmentation: str = setting("none", "training-time augmentation preset",
                                tuple(AUGMENTATION_PRESETS))
    augmentation_kwargs: dict[str, Any] = setting(
        {}, "build_augmentation arguments over the preset's, e.g. {\"rotation\": 12}")
    freeze_base_epochs: int = setting(
        0, "> 0: two-phase fine-tune of a pretrained base, frozen for these epochs")
    finetune_learning_rate: float | None = setting(
        None, "the fine-tune phase's rate (default: learning_rate / 10)")
    mixed_precision: bool = setting(
        False, "mixed_float16 on GPUs, mixed_bfloat16 on CPUs with AMX or AVX-512 BF16 "
        "(else float32); the saved model is float32")
    logit_adjustment: bool = setting(
        False, "after training, divide the probabilities by the train prior to a power chosen "
        "on val for macro F1 (in the served model too)")
    temperature_scaling: bool = setting(
        False, "after training (and the logit adjustment), fit a temperature on val for "
        "calibrated probabilities, softmax(log p / T), and build it into the served model when "
        "it lowers val's expected calibration error; the top class never changes")
    tta: str = setting("none", "test-time augmentation the exported model also offers, in "
                       "signatures of its own (the logit adjustment's power is chosen for "
                       "it); serving_default stays one pass", TTA_MODES)
    init_from: str | None = setting(
        None, "start from the weights of this model (a SavedModel version directory, or a "
        "trained model's directory with model.keras) of the same architecture and builder "
        "arguments; 'teacher': the distillation teacher's, to fine-tune a student from it")
    distill_weight: float = setting(
        0.5, "with a teacher: the weight of its probabilities in the targets (the rest: the "
        "hard label)")
    distill_temperature: float = setting(
        1.0, "with a teacher: soften its probabilities by this temperature before they become "
        "targets (p ** (1/T), renormalised); above 1 brings out what a teacher that knows its "
        "train faces by heart says about the other classes")
    teacher_predictions: str | None = setting(
        None, "distillation: a teacher step's output (components.distill), None for none")

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise RecipeError(name, f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("early_stopping_patience", "reduce_lr_patience"):
            if getattr(self, name) < 0:
                raise RecipeError(name, f"{name} must be >= 0, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise RecipeError("learning_rate",
                              f"learning_rate must be > 0, got {self.learning_rate}")
        for f in fields(self):
            allowed = f.metadata.get("choices")
            if allowed and getattr(self, f.name) not in allowed:
                raise RecipeError(f.name, f"{f.name} must be one of {allowed}, got "
                                  f"{getattr(self, f.name)!r}")
        if not 0 <= self.freeze_base_epochs < self.epochs:
            raise RecipeError("freeze_base_epochs", f"freeze_base_epochs must be in [0, "
                              f"epochs={self.epochs}), got {self.freeze_base_epochs}")
        first_phase = self.freeze_base_epochs or self.epochs
        if not 0 <= self.warmup_epochs < first_phase:
            raise RecipeError("warmup_epochs", f"warmup_epochs must be in [0, {first_phase}) "
                              f"(the first phase's epochs), got {self.warmup_epochs}")
        if self.warmup_epochs and self.schedule != "cosine":
            raise RecipeError("warmup_epochs", "warmup_epochs needs schedule='cosine'")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise RecipeError("weight_decay",
                              f"weight_decay must be >= 0 or None, got {self.weight_decay}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise RecipeError("label_smoothing",
                              f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not self.distill_temperature > 0:
            raise RecipeError("distill_temperature", f"distill_temperature must be > 0, got "
                              f"{self.distill_temperature}")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise RecipeError("distill_weight",
                              f"distill_weight must be in [0, 1], got {self.distill_weight}")
        if self.finetune_learning_rate is not None and self.finetune_learning_rate <= 0:
            raise RecipeError("finetune_learning_rate", f"finetune_learning_rate must be > 0 "
                              f"or None, got {self.finetune_learning_rate}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """A checked config from a mapping of field names to values (a profile's overrides,
        a pipeline's ``recipe`` parameter). Numbers that KFP carried as doubles become ints
        again where the field is an int. Raises :class:`RecipeError` naming the first field
        that is unknown, of the wrong type or out of range."""
        hints = typing.get_type_hints(cls)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise RecipeError(unknown[0], f"unknown recipe setting(s) {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(known))}")
        return cls(**{k: _coerce(k, hints[k], v) for k, v in values.items()})

    def recipe(self) -> dict[str, Any]:
        """The recipe as a plain dict (what the pipeline's ``recipe`` parameter carries):
        every field but the per-task :data:`VARIANT_FIELDS`, and none that is ``None`` (KFP
        carries no nulls; :meth:`from_dict` restores them as their defaults, which they
        are: no field defaults to anything else and accepts ``None``)."""
        return {k: v for k, v in asdict(self).items()
                if k not in VARIANT_FIELDS and v is not None}


def check_tta(mode: str) -> str:
    """``mode`` if it is one of :data:`TTA_MODES`; else ValueError naming them."""
    if mode not in TTA_MODES:
        raise RecipeError("tta", f"tta must be one of {TTA_MODES}, got {mode!r}")
    return mode


PATH_FIELDS = ("checkpoint_dir", "teacher_predictions", "init_from")


def config_record(config: TrainConfig) -> dict[str, Any]:
    """``config`` as a model's records keep it (summary, metrics.json, model card): every
    field, paths reduced to their last part, so that a released model names no directory
    of the machine that trained it."""
    record = asdict(config)
    for name in PATH_FIELDS:
        if record[name]:
            record[name] = record[name].rstrip("/").rsplit("/", 1)[-1]
    return record


def recipe_fields() -> list[Any]:
    """The recipe's fields (``dataclasses.Field``): every field a recipe may set."""
    return [f for f in fields(TrainConfig) if f.name not in VARIANT_FIELDS]


def field_type(name: str) -> type:
    """The plain type of a field (``float | None`` -> ``float``, ``dict[str, Any]`` ->
    ``dict``)."""
    hint = typing.get_type_hints(TrainConfig)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = args[0]
    return typing.get_origin(hint) or hint


def default_value(name: str) -> Any:
    """A field's default value."""
    f = {f.name: f for f in fields(TrainConfig)}[name]
    return f.default_factory() if f.default is MISSING else f.default


def _coerce(name: str, hint: Any, value: Any) -> Any:
    nullable = type(None) in typing.get_args(hint)
    if value is None:
        if nullable:
            return None
        raise RecipeError(name, f"{name} must be set, got null")
    kind = field_type(name)
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool)
        or isinstance(value, float) and value.is_integer(),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
        dict: isinstance(value, Mapping),
    }[kind]
    if not ok:
        raise RecipeError(name, f"{name} must be {kind.__name__}"
                          f"{' or null' if nullable else ''}, got {value!r}")
    return dict(value) if kind is dict else kind(value)


def builder_kwargs(model_options: Mapping[str, Any], architecture: str) -> dict[str, Any]:
    """``architecture``'s builder arguments from a pipeline's ``model_options``
    (``{"architecture": {"argument": value}}``).

    KFP carries numbers as doubles (a protobuf ``Struct``), so whole numbers become ints
    again (filters, units, kernel sizes); no builder takes a whole-valued float.
    """
    def restore(value: Any) -> Any:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, list):
            return [restore(v) for v in value]
        return value

    return {k: restore(v) for k, v in model_options.get(architecture, {}).items()}


def checkpoint_dir(root: str, architecture: str, seed: int,
                   model_kwargs: Mapping[str, Any] | None = None) -> str | None:
    """Where one variant keeps its checkpoints under ``root`` (``""``: nowhere, ``None``).
    A variant built with other builder arguments gets its own directory, so that a run
    never resumes from weights of another shape."""
    if not root:
        return None
    name = f"{architecture}-seed{seed}"
    if model_kwargs:
        options = json.dumps(model_kwargs, sort_keys=True).encode()
        name += "-" + hashlib.sha256(options).hexdigest()[:8]
    return f"{root.rstrip('/')}/{name}"


def variant_config(recipe: Mapping[str, Any], architecture: str, seed: int,
                   model_options: Mapping[str, Any], checkpoint_root: str,
                   teacher_predictions: str | None = None) -> TrainConfig:
    """The config of one train task: the pipeline's ``recipe`` for ``architecture`` with its
    builder arguments from ``model_options``, the run's ``seed``, its checkpoint directory
    under ``checkpoint_root`` (``""``: none) and, to distil, the teacher step's output."""
    kwargs = builder_kwargs(model_options, architecture)
    root = checkpoint_dir(checkpoint_root, architecture, seed, kwargs)
    if root and teacher_predictions:  # a student never resumes a non-distilled run
        root += "-distilled"
    return TrainConfig.from_dict({
        **recipe, "architecture": architecture, "seed": seed, "model_kwargs": kwargs,
        "checkpoint_dir": root, "teacher_predictions": teacher_predictions})
