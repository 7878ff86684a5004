"""Post-hoc logit adjustment: trade a little accuracy for the rare classes' recall.

A network trained on FER2013's skewed classes (happy 25%, disgust 1.5%) under-predicts the
rare ones. Logit adjustment (Menon et al., "Long-tail learning via logit adjustment", ICLR
2021) subtracts ``tau * log(prior)`` from the logits, i.e. divides each probability by its
class prior to the power ``tau`` and renormalises. ``tau = 0`` is the plain model, ``tau = 1``
the balanced-error Bayes rule. One number, chosen on the validation split to maximise macro
F1, so it cannot fit that split the way per-class thresholds would.

:class:`PriorAdjustment` is the layer appended to the trained network, so evaluation, test-
time augmentation and the exported SavedModel all see the adjusted probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import layers, ops
from sklearn.metrics import accuracy_score, f1_score

from serving.contract import NUM_CLASSES

# 0.00 (no adjustment: the sweep's reference), 0.05, ..., 2.00
TAU_GRID = tuple(round(0.05 * i, 2) for i in range(0, 41))
_EPS = 1e-12


def class_prior(labels: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Class frequencies of ``labels`` (add-one smoothed, so no class has prior 0)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes) + 1.0
    return counts / counts.sum()


def adjust(probabilities: np.ndarray, prior: np.ndarray, tau: float) -> np.ndarray:
    """``probabilities / prior**tau``, renormalised over the last axis (the layer's
    computation, in NumPy)."""
    scores = np.log(np.asarray(probabilities, np.float64) + _EPS) - tau * np.log(prior)
    scores -= scores.max(axis=-1, keepdims=True)
    e = np.exp(scores)
    return e / e.sum(axis=-1, keepdims=True)


def served(probabilities: np.ndarray, prior: np.ndarray, tau: float) -> np.ndarray:
    """What a model with the adjustment serves: [N,K] probabilities adjusted, or [V,N,K]
    per-view probabilities (``components.train.tta.view_probabilities``) each adjusted, then
    averaged over the views, as the TTA graph does."""
    probabilities = np.asarray(probabilities)
    if probabilities.ndim == 2:
        return adjust(probabilities, prior, tau)
    if probabilities.ndim == 3:
        return adjust(probabilities, prior, tau).mean(axis=0)
    raise ValueError(f"probabilities must be [N,K] or [views,N,K], got shape "
                     f"{probabilities.shape}")


def choose_tau(probabilities: np.ndarray, labels: np.ndarray, prior: np.ndarray,
               grid: Sequence[float] = TAU_GRID) -> tuple[float, list[dict[str, float]]]:
    """The ``tau`` of ``grid`` with the best macro F1 on (``probabilities``, ``labels``); ties
    go to the smaller one. Returns it and the whole sweep (tau, macro F1, accuracy).

    ``probabilities``: [N,K], or [V,N,K] for a model served with test-time augmentation:
    tau is then scored on what that model serves (:func:`served`), the views' mean.
    """
    probabilities = np.asarray(probabilities)
    rows = probabilities.shape[-2] if probabilities.ndim >= 2 else 0
    if rows != len(labels) or len(labels) == 0:
        raise ValueError(f"need one probability row per label, got {rows} rows "
                         f"for {len(labels)} labels")
    classes = list(range(probabilities.shape[-1]))
    sweep = []
    for tau in grid:
        pred = served(probabilities, prior, tau).argmax(axis=1)
        sweep.append({"tau": float(tau),
                      "macro_f1": float(f1_score(labels, pred, labels=classes, average="macro",
                                                 zero_division=0)),
                      "accuracy": float(np.mean(pred == labels))})
    best = max(sweep, key=lambda r: (round(r["macro_f1"], 10), -r["tau"]))
    return best["tau"], sweep


@keras.saving.register_keras_serializable(package="fer")
class PriorAdjustment(layers.Layer):
    """[N,K] probabilities -> [N,K] probabilities divided by ``prior**tau``, renormalised."""

    def __init__(self, prior: Sequence[float], tau: float, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        prior = [float(p) for p in prior]
        if any(p <= 0 for p in prior) or not np.isclose(sum(prior), 1.0, atol=1e-4):
            raise ValueError(f"prior must be positive and sum to 1, got {prior}")
        if tau < 0:
            raise ValueError(f"tau must be >= 0, got {tau}")
        self.prior, self.tau = prior, float(tau)

    def call(self, inputs):
        shift = ops.convert_to_tensor([-self.tau * float(np.log(p)) for p in self.prior],
                                      dtype=inputs.dtype)
        return ops.softmax(ops.log(inputs + _EPS) + shift, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "prior": self.prior, "tau": self.tau}


def with_prior_adjustment(model: keras.Model, prior: Sequence[float], tau: float) -> keras.Model:
    """``model`` with a :class:`PriorAdjustment` head appended (same name and input)."""
    if len(prior) != model.output_shape[-1]:
        raise ValueError(f"prior has {len(prior)} classes, the model outputs "
                         f"{model.output_shape[-1]}")
    outputs = PriorAdjustment(prior, tau, name="prior_adjustment")(model.output)
    return keras.Model(model.inputs, outputs, name=model.name)


def val_scores(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """``val_accuracy`` and ``val_macro_f1`` of the argmax of ``probabilities``."""
    pred = np.asarray(probabilities).argmax(axis=1)
    return {"val_accuracy": round(float(accuracy_score(labels, pred)), 6),
            "val_macro_f1": round(float(f1_score(labels, pred, average="macro",
                                                 labels=list(range(np.shape(probabilities)[-1])),
                                                 zero_division=0)), 6)}


def fit_prior_adjustment(model: keras.Model, val_proba: np.ndarray, val_labels: np.ndarray,
                         train_labels: np.ndarray
                         ) -> tuple[keras.Model, np.ndarray, dict[str, Any]]:
    """Choose tau on val for ``model``, whose plain val probabilities are ``val_proba``:
    [N,K], or [V,N,K] per test-time-augmentation view when the model will be served with
    TTA (the tau that is best for the TTA output is often not the one best without it).

    Returns the model with the :class:`PriorAdjustment` head, the val probabilities it
    serves ([N,K]) and the record a summary keeps (tau, prior, val figures before it).
    """
    # add-one smoothed: uniform without train labels
    prior = class_prior(train_labels, np.shape(val_proba)[-1])
    tau, sweep = choose_tau(val_proba, val_labels, prior)
    plain = next(r for r in sweep if r["tau"] == 0.0)
    record = {"tau": tau, "prior": [round(float(p), 6) for p in prior],
              "val_accuracy_unadjusted": round(plain["accuracy"], 6),
              "val_macro_f1_unadjusted": round(plain["macro_f1"], 6)}
    return with_prior_adjustment(model, prior, tau), served(val_proba, prior, tau), record


def fit_one_pass_adjustment(model: keras.Model, val_views: np.ndarray, val_labels: np.ndarray,
                            train_labels: np.ndarray
                            ) -> tuple[keras.Model, np.ndarray, dict[str, Any]]:
    """:func:`fit_prior_adjustment` for a model whose test-time augmentation is a choice at
    serving time: ``val_views`` [V,N,K] holds its val probabilities per view, view 0 the
    plain pass. tau is chosen for that one pass, which ``serving_default`` serves and the
    gate judges; the TTA signatures average the views so adjusted.

    Returns the model with the :class:`PriorAdjustment` head, the adjusted views [V,N,K]
    and the record a summary keeps (its figures before the adjustment are the one pass's).
    """
    views = np.asarray(val_views)
    if views.ndim != 3:
        raise ValueError(f"val_views must be [views,N,K], got shape {views.shape}")
    model, _, record = fit_prior_adjustment(model, views[0], val_labels, train_labels)
    return (model, adjust(views, np.asarray(record["prior"]), record["tau"]),
            {**record, "chosen_for": "one pass"})


# --- temperature scaling: probabilities that mean what they say --------------------------

@keras.saving.register_keras_serializable(package="fer")
class TemperatureScaling(layers.Layer):
    """[N,K] probabilities -> ``softmax(log p / T)`` (Guo et al., 2017). After a
    :class:`PriorAdjustment` this is ``softmax((log p - tau log prior) / T)``: the
    adjustment's normaliser is a constant shift, which the softmax drops. The top class never
    changes; only how sure the model says it is."""

    def __init__(self, temperature: float, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def call(self, inputs):
        return ops.softmax(ops.log(inputs + _EPS) / self.temperature, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "temperature": self.temperature}


def with_temperature(model: keras.Model, temperature: float) -> keras.Model:
    """``model`` with a :class:`TemperatureScaling` head appended (same name and input)."""
    outputs = TemperatureScaling(temperature, name="temperature_scaling")(model.output)
    return keras.Model(model.inputs, outputs, name=model.name)


def fit_temperature_scaling(model: keras.Model, val_proba: np.ndarray, val_labels: np.ndarray,
                            ) -> tuple[keras.Model, dict[str, Any]]:
    """Fit the temperature on val for what ``model`` serves by default (``val_proba``: its
    one-pass val probabilities, [N,K]), and append it when it lowers val's expected
    calibration error. Returns the model (with the head, or unchanged) and the record a
    summary keeps: the temperature, whether it was applied, val ECE before and after."""
    from components.uncertainty import expected_calibration_error, fit_temperature

    temperature = fit_temperature(val_labels, val_proba)
    before = expected_calibration_error(val_labels, val_proba)
    after = expected_calibration_error(val_labels, scaled_probabilities(val_proba, temperature))
    applied = after < before
    record = {"temperature": temperature if applied else 1.0, "fitted_temperature": temperature,
              "applied": applied, "val_ece_before": round(before, 5),
              "val_ece_after": round(after if applied else before, 5)}
    return (with_temperature(model, temperature) if applied else model), record


def scaled_probabilities(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """The layer's computation in NumPy: ``softmax(log p / T)`` over the last axis (for [N,K]
    or [V,N,K])."""
    scores = np.log(np.asarray(probabilities, np.float64) + _EPS) / temperature
    scores -= scores.max(axis=-1, keepdims=True)
    e = np.exp(scores)
    return e / e.sum(axis=-1, keepdims=True)


def calibration_heads(model: keras.Model) -> tuple[keras.Model, list[layers.Layer]]:
    """The network under ``model``'s calibration heads (its plain probabilities) and the
    heads on top of it, in order: its trailing :class:`PriorAdjustment` and
    :class:`TemperatureScaling` layers. No heads: ``(model, [])``."""
    heads: list[layers.Layer] = []
    for layer in reversed(model.layers):
        if not isinstance(layer, (PriorAdjustment, TemperatureScaling)):
            break
        heads.insert(0, layer)
    if not heads:
        return model, []
    return keras.Model(model.inputs, heads[0].input, name=f"{model.name}_plain"), heads


def apply_heads(probabilities: np.ndarray, heads: Sequence[layers.Layer]) -> np.ndarray:
    """What ``heads`` (:func:`calibration_heads`) make of plain probabilities, in NumPy:
    ``softmax((log p - tau log prior) / T)``."""
    out = np.asarray(probabilities, np.float64)
    for head in heads:
        if isinstance(head, PriorAdjustment):
            out = adjust(out, np.asarray(head.prior), head.tau)
        else:
            out = scaled_probabilities(out, head.temperature)
    return out
