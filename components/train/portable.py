"""Training a recipe's network on a machine without TensorFlow (Keras 3 on JAX).

The train step (:mod:`components.train.train`) feeds Keras through ``tf.data`` and needs
TensorFlow. A GPU box often has JAX (or PyTorch: any Keras 3 backend should do, JAX is the
one tested) and Keras 3 but no TensorFlow; there the same recipe (network builder,
augmentation layers, optimizer and schedule, loss, distillation targets) can be fitted from
numpy arrays, and everything before and after the fit stays in the pipeline:

    # here: the train and val faces, their class weights and a teacher's probabilities
    python -m components.train.portable pack RUN/.../preprocess-op/splits pack.npz \\
        --class-weights RUN/.../class-weights-op/weights \\
        --teacher RUN/.../teacher-op/predictions
    # there (KERAS_BACKEND=jax): fit a profile's recipe, settings overridden as JSON
    python -m components.train.portable fit pack.npz fitted/ --profile student \\
        --recipe '{"epochs": 200}'
    # here: the train step's output (model.keras, logit adjustment, summary, curves)
    python -m components.train.portable finish pack.npz fitted/ model/

``model/`` is what the train step writes, so ``fer-pipeline deploy model/ --dataset
RUN/.../preprocess-op/splits`` evaluates it on test, gates, exports and deploys it. The pack
holds no test faces. ``fit`` writes ``model.weights.h5`` (Keras' own format, read under any
backend), ``history.json`` and ``fit.json`` (the recipe, the architecture's arguments, the
backend and device, the time). Class balance by sampling needs ``tf.data``: ``fit`` refuses it.

Length: the three commands and the pack they share, kept together because each half
(here, there) is only meaningful with the other.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from components.dataset import TRAIN, VAL, DataError, FaceDataset, read_json, write_json
from components.train.recipe import RecipeError, TrainConfig, builder_kwargs, config_record
from serving.contract import FACE_SHAPE

WEIGHTS_FILE = "model.weights.h5"
FIT_FILE = "fit.json"
HISTORY_FILE = "history.json"


def pack(dataset_dir: str | Path, output: str | Path, class_weights: str | Path | None = None,
         teacher: str | Path | None = None) -> Path:
    """Write the train and val faces of the dataset at ``dataset_dir`` to ``output``
    (compressed npz), with the class-weight artifact at ``class_weights`` and the teacher
    step's output at ``teacher`` when given (its predictions checked against the train
    faces). Returns ``output``."""
    from components.class_weights import load_class_weights
    from components.distill import has_teacher, load_teacher

    data = FaceDataset.load(dataset_dir)
    train, val = data.split(TRAIN), data.split(VAL)
    if len(train) == 0 or len(val) == 0:
        raise DataError(f"{dataset_dir}: training needs train and val items "
                        f"(got {len(train)} train, {len(val)} val)")
    extra: dict[str, Any] = {}
    if class_weights:
        weights = load_class_weights(class_weights, data.num_classes)
        extra["class_weights"] = np.array([weights[k] for k in range(data.num_classes)])
    if teacher:
        if not has_teacher(teacher):
            raise DataError(f"{teacher}: no teacher predictions there")
        probabilities, info = load_teacher(teacher, train)
        extra["teacher_probabilities"] = probabilities.astype(np.float32)
        extra["teacher_info"] = np.array(json.dumps(info))
    both = data.subset(np.isin(data.splits, [TRAIN, VAL]))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(output, images=both.images, labels=both.labels.astype(np.int64),
                        splits=both.splits.astype(str), source_ids=both.source_ids.astype(str),
                        class_names=np.array(both.class_names, dtype=str), **extra)
    return output


class Pack:
    """A pack read back: the train and val splits, and what came with them."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise DataError(f"no pack at {path}: make one with `pack`")
        with np.load(path, allow_pickle=False) as saved:
            data = FaceDataset(saved["images"], saved["labels"], saved["splits"],
                               saved["source_ids"], tuple(str(n) for n in saved["class_names"]))
            weights = saved["class_weights"] if "class_weights" in saved else None
            self.teacher = (saved["teacher_probabilities"] if "teacher_probabilities" in saved
                            else None)
            self.teacher_info = (json.loads(str(saved["teacher_info"]))
                                 if "teacher_info" in saved else None)
        self.path = path
        self.train, self.val = data.split(TRAIN), data.split(VAL)
        self.class_weights = (None if weights is None
                              else {k: float(w) for k, w in enumerate(weights)})
        if self.teacher is not None and self.teacher.shape != (len(self.train),
                                                               data.num_classes):
            raise DataError(f"{path}: the teacher's probabilities {self.teacher.shape} do not "
                            f"match its {len(self.train)} train faces")


def recipe_config(profile: str, recipe: dict[str, Any] | None = None, seed: int = 42,
                  architecture: str | None = None) -> TrainConfig:
    """The config a profile's pipeline would give its first (or the named) architecture,
    with ``recipe`` applied over the profile's recipe."""
    from pipeline.profiles import profile_parameters

    params = profile_parameters(profile, recipe)
    architectures = params["architectures"]
    architecture = architecture or architectures[0]
    return TrainConfig.from_dict({
        **params["recipe"], "architecture": architecture, "seed": seed,
        "model_kwargs": builder_kwargs(params.get("model_options", {}), architecture)})


def fit(pack_path: str | Path, output_dir: str | Path, config: TrainConfig,
        verbose: bool = False, time_budget: float | None = None) -> dict[str, Any]:
    """Fit ``config``'s network on the pack's train faces (the teacher's probabilities mixed
    with the labels when the pack has a teacher and the recipe a ``distill_weight``), scored on
    val every epoch, on whatever Keras backend this process runs; checkpointed under
    ``config.checkpoint_dir`` (resumed from there) when it is set. ``time_budget``: seconds
    the fit may take; a short probe measures an epoch and the compile first, and the
    schedule is shortened to the epochs that fit (never below the warm-up plus one).
    Writes the weights, history and ``fit.json`` to ``output_dir`` and returns what
    ``fit.json`` holds."""
    if config.class_balance == "sampling":
        raise RecipeError("class_balance", "class_balance 'sampling' needs the train step's "
                          "tf.data pipeline; use 'weights' or 'none' here")
    if config.freeze_base_epochs or config.init_from:
        raise RecipeError("init_from" if config.init_from else "freeze_base_epochs",
                          "two-phase fine-tuning and init_from need the train step")
    data = Pack(pack_path)
    import keras  # after the checks: a refusal costs no backend start

    from components.distill import distillation_targets
    from components.train.fit import EpochRecord, ProgressLines, dtype_policy

    train, val = data.train, data.val
    distilling = data.teacher is not None and config.distill_weight > 0
    if distilling:  # the loss takes soft targets (make_loss: a teacher's predictions are set)
        config = replace(config, teacher_predictions=str(data.path))
        targets = distillation_targets(train.labels, data.teacher, config.distill_weight,
                                       config.distill_temperature)
    else:
        config = replace(config, teacher_predictions=None)
        targets = train.labels
    one_hot = config.label_smoothing > 0 or distilling
    if one_hot and not distilling:
        targets = np.eye(train.num_classes, dtype=np.float32)[train.labels]
    val_targets = (np.eye(train.num_classes, dtype=np.float32)[val.labels] if one_hot
                   else val.labels)
    weights = data.class_weights if config.class_balance == "weights" else None
    if config.class_balance == "weights" and weights is None:
        raise DataError(f"{pack_path}: the recipe weights classes but the pack has no class "
                        "weights (pack it with --class-weights)")

    x, xv = train.images[..., None].astype(np.float32), val.images[..., None].astype(np.float32)
    planned = config.epochs
    backend = keras.backend.backend()
    policy = _policy(config, backend)
    with dtype_policy(policy):  # the layers keep it; their weights stay float32
        model, fit_model, config = _probed_and_compiled(config, x, targets, (xv, val_targets),
                                                         weights, train, time_budget)
    print(f"[fit] {config.architecture} on Keras {keras.__version__} ({backend}"
          f"{f', {policy}' if policy else ''}): {model.count_params():,} parameters, "
          f"{len(train):,} train / {len(val):,} val faces, "
          f"{config.epochs} epochs{', distilling' if distilling else ''}", flush=True)

    callbacks: list[Any] = [EpochRecord()]
    if config.checkpoint_dir:
        callbacks.insert(0, keras.callbacks.BackupAndRestore(config.checkpoint_dir))
    steps = math.ceil(len(train) / config.batch_size)
    callbacks.append(ProgressLines(config.architecture, steps, every=2.0 if verbose else 60.0))
    start = time.perf_counter()
    history = fit_model.fit(x, targets, batch_size=config.batch_size, epochs=config.epochs,
                            validation_data=(xv, val_targets), class_weight=weights,
                            callbacks=callbacks, shuffle=True, verbose=0)
    seconds = time.perf_counter() - start
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_weights(output_dir / WEIGHTS_FILE)
    write_json(output_dir / HISTORY_FILE, {k: [float(v) for v in vs]
                                           for k, vs in history.history.items()})
    record = {"config": config_record(config), "num_classes": train.num_classes,
              "backend": backend, "keras": keras.__version__, "mixed_precision": policy,
              "devices": [str(d) for d in _devices(backend)], "seconds": round(seconds, 1),
              "epochs_run": len(history.history.get("loss", [])), "epochs_planned": planned,
              "time_budget": time_budget,
              "val_accuracy": float(history.history["val_accuracy"][-1]),
              "teacher": data.teacher_info if distilling else None}
    write_json(output_dir / FIT_FILE, record)
    print(f"[fit] done in {seconds:.0f} s: val accuracy (one pass, unadjusted) "
          f"{record['val_accuracy']:.4f}", flush=True)
    return record


def _policy(config: TrainConfig, backend: str) -> str | None:
    """The recipe's mixed precision on this backend: float16 on GPUs; bfloat16 on a CPU
    only under TensorFlow (oneDNN's AMX path; JAX's CPU backend is no faster in it)."""
    from components.train.fit import mixed_policy, tensorflow_mixed_policy

    if not config.mixed_precision:
        return None
    if backend == "tensorflow":
        return tensorflow_mixed_policy()
    gpus = [d for d in _devices(backend) if getattr(d, "platform", str(d)) not in ("cpu", "")]
    return mixed_policy(len(gpus), frozenset())


def _probed_and_compiled(config: TrainConfig, x: np.ndarray, targets: np.ndarray,
                         validation: tuple[np.ndarray, np.ndarray],
                         weights: dict[int, float] | None, train: FaceDataset,
                         time_budget: float | None) -> tuple[Any, Any, TrainConfig]:
    """The network and what is fitted, compiled, and the config they were compiled for:
    with a ``time_budget``, its schedule shortened to the epochs that fit."""
    if time_budget is not None:
        per_epoch, compiling = _seconds_per_epoch(config, x, targets, validation, weights,
                                                  train.num_classes)
        affordable = max(config.warmup_epochs + 1,
                         int((time_budget - compiling) / per_epoch))
        planned, config = config.epochs, replace(config, epochs=min(config.epochs, affordable))
        print(f"[fit] about {per_epoch:.1f} s an epoch: {config.epochs} of {planned} epochs "
              f"fit in {time_budget:g} s", flush=True)
    return (*_compiled(config, train.num_classes, len(train)), config)


#: Batches of train faces the time-budget probe fits (twice: the first epoch compiles).
PROBE_BATCHES = 20


def _compiled(config: TrainConfig, num_classes: int, train_items: int) -> tuple[Any, Any]:
    """The network, seeded, and what is fitted (it inside the augmentation), compiled with
    the recipe's optimizer, schedule and loss."""
    import keras

    from components.train.augment import augmentation_from_preset, with_augmentation
    from components.train.fit import make_loss, make_optimizer
    from components.train.models import build_model

    keras.utils.set_random_seed(config.seed)
    model = build_model(config.architecture, input_shape=FACE_SHAPE, num_classes=num_classes,
                        **config.model_kwargs)
    augmentation = augmentation_from_preset(config.augmentation, config.seed,
                                            config.augmentation_kwargs)
    fit_model = with_augmentation(model, augmentation) if augmentation else model
    steps = math.ceil(train_items / config.batch_size)
    fit_model.compile(optimizer=make_optimizer(config, config.learning_rate, steps,
                                               config.epochs, config.warmup_epochs),
                      loss=make_loss(config), metrics=["accuracy"])
    return model, fit_model


def _seconds_per_epoch(config: TrainConfig, x: np.ndarray, y: np.ndarray,
                       validation: tuple[np.ndarray, np.ndarray],
                       weights: dict[int, float] | None, num_classes: int
                       ) -> tuple[float, float]:
    """An epoch's seconds over all of ``x``, scaled from a compiled second epoch over its
    first :data:`PROBE_BATCHES` batches (val scored whole each time: an overestimate), and
    the seconds the first epoch spent compiling (which the real fit spends again)."""
    from components.train.fit import EpochRecord

    n = min(len(x), PROBE_BATCHES * config.batch_size)
    _, probe = _compiled(replace(config, epochs=2, warmup_epochs=0), num_classes, n)
    history = probe.fit(x[:n], y[:n], batch_size=config.batch_size, epochs=2,
                        validation_data=validation, class_weight=weights,
                        callbacks=[EpochRecord()], verbose=0)
    first, second = history.history["epoch_seconds"]
    return second * len(x) / n, max(first - second, 0.0)


def _devices(backend: str) -> list[Any]:
    """The devices the backend computes on (for the record)."""
    if backend == "jax":
        import jax

        return jax.devices()
    if backend == "torch":
        import torch

        return [f"cuda:{i}" for i in range(torch.cuda.device_count())] or ["cpu"]
    return []


def finish(pack_path: str | Path, fitted_dir: str | Path, output_dir: str | Path
           ) -> dict[str, Any]:
    """The train step's output in ``output_dir`` from a ``fit`` in ``fitted_dir``: the
    network rebuilt and given the fitted weights, then finalised as the train step finalises
    (val scored on what will be served, the logit adjustment and temperature fitted there
    when the recipe asks, ``model.keras``, the summary and the curves). Needs TensorFlow."""
    from components.train.models import build_model
    from components.train.train import Fitted, finalise

    data = Pack(pack_path)
    fitted_dir = Path(fitted_dir)
    if not (fitted_dir / FIT_FILE).is_file():
        raise DataError(f"{fitted_dir}: no {FIT_FILE}: not the output of `fit`")
    record = read_json(fitted_dir / FIT_FILE)
    config = TrainConfig.from_dict(record["config"])
    if record["num_classes"] != data.train.num_classes:
        raise DataError(f"{fitted_dir} was fitted for {record['num_classes']} classes; the "
                        f"pack has {data.train.num_classes}")
    model = build_model(config.architecture, input_shape=FACE_SHAPE,
                        num_classes=data.train.num_classes, **config.model_kwargs)
    model.load_weights(fitted_dir / WEIGHTS_FILE)
    history = read_json(fitted_dir / HISTORY_FILE)
    distillation = None
    if record.get("teacher"):
        info = record["teacher"]
        distillation = {**{k: v for k, v in info.items() if k not in ("key", "teacher")},
                        "weight": config.distill_weight,
                        "temperature": config.distill_temperature,
                        "initialised_from_teacher": False,
                        "fitted_on": f"Keras {record['keras']} ({record['backend']})"}
    fitted = Fitted(model, history, float(record["seconds"]), 1, False)
    return finalise(config, fitted, data.train, data.val, Path(output_dir), distillation)


def main(argv: list[str] | None = None) -> int:
    """The ``pack``, ``fit`` and ``finish`` commands (see the module's docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m components.train.portable",
        description="Train a recipe's network where TensorFlow is not installed (Keras 3 on "
                    "JAX or PyTorch): pack here, fit there, finish here.")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("pack", help="the train and val faces (and a teacher) in one file")
    p.add_argument("dataset", help="a dataset directory (the preprocess step's splits)")
    p.add_argument("output", help="the pack to write (.npz)")
    p.add_argument("--class-weights", help="the class weights step's artifact")
    p.add_argument("--teacher", help="the teacher step's output (teacher.npz, teacher.json)")
    f = commands.add_parser("fit", help="fit a profile's recipe on any Keras backend")
    f.add_argument("pack")
    f.add_argument("output", help="a directory for the weights, history and fit.json")
    f.add_argument("--profile", default="student", help="the profile whose recipe and "
                   "first architecture to fit (default: %(default)s)")
    f.add_argument("--architecture", help="another of the profile's architectures")
    f.add_argument("--recipe", default="{}", help="recipe settings over the profile's, JSON")
    f.add_argument("--seed", type=int, default=42)
    f.add_argument("--checkpoint-dir", help="checkpoint every epoch there; resume from it")
    f.add_argument("--time-budget", type=float, metavar="SECONDS",
                   help="shorten the schedule to the epochs that take about this long "
                        "(an epoch and the compile measured first)")
    f.add_argument("--verbose", "-v", action="store_true", help="a progress line every 2 s")
    n = commands.add_parser("finish", help="the train step's output from a fit (TensorFlow)")
    n.add_argument("pack")
    n.add_argument("fitted", help="the directory `fit` wrote")
    n.add_argument("output", help="the model directory to write (model.keras, summary)")
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            path = pack(args.dataset, args.output, args.class_weights, args.teacher)
            print(f"{path}: {path.stat().st_size / 1e6:.1f} MB")
        elif args.command == "fit":
            try:
                recipe = json.loads(args.recipe)
            except json.JSONDecodeError as exc:
                raise RecipeError("recipe", f"--recipe is not JSON: {exc}") from exc
            config = recipe_config(args.profile, recipe, args.seed, args.architecture)
            if args.checkpoint_dir:
                config = replace(config, checkpoint_dir=args.checkpoint_dir)
            fit(args.pack, args.output, config, args.verbose, args.time_budget)
        else:
            finish(args.pack, args.fitted, args.output)
    except (DataError, RecipeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
