"""Run profiles: named sets of pipeline parameters. Explicit parameters override them."""

from __future__ import annotations

from typing import Any

PROFILES: dict[str, dict[str, Any]] = {
    # A small real subset and one epoch: checks the whole path end to end in minutes.
    "smoke": {
        "architectures": ["baseline_cnn"],
        "epochs": 1,
        "max_train_per_class": 800,
        "batch_size": 64,
        "learning_rate": 1e-3,
        "f1_threshold": 0.05,
        "min_improvement": 0.01,
    },
    # All of the data, trained until early stopping.
    "full": {
        "architectures": ["baseline_cnn"],
        "epochs": 30,
        "max_train_per_class": 0,
        "batch_size": 64,
        "learning_rate": 1e-3,
        "f1_threshold": 0.5,
        "min_improvement": 0.01,
    },
}


def profile_parameters(name: str, **overrides: Any) -> dict[str, Any]:
    """The profile's parameters with every non-``None`` override applied."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}")
    params = dict(PROFILES[name])
    params.update({k: v for k, v in overrides.items() if v is not None})
    return params
