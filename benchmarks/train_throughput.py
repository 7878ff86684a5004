"""Training throughput of the model zoo on real faces: images/s and achieved GFLOP/s.

    python -m benchmarks.train_throughput [--architectures baseline_cnn,deep_cnn]
        [--batch-size 64] [--steps 4] [--mixed-precision] [--model-options JSON]

With ``--mixed-precision`` each architecture is timed in float32 and then in the policy
the recipe's ``mixed_precision`` picks on this machine (float16 on GPUs, bfloat16 on CPUs
that compute in it natively), side by side. ``--model-options`` takes the pipeline's form,
e.g. ``'{"configurable_cnn": {"filters": [48, 96, 192, 384]}}'`` for the bundled width.

For each architecture: build, compile (Adam, sparse cross-entropy), run warm-up steps
(tracing), then time ``--steps`` training steps on batches of real FER2013 train faces.
FLOPs per image are counted analytically from the layers (convolutions, separable and
depthwise convolutions, dense layers: 2 FLOPs per multiply-add); a training step costs about
3x the forward pass (forward, gradients for activations and for weights). The default run
(all six architectures, the median of 4 timed steps of 64) takes about 1.5 minutes on 2
CPU cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import layers
from PIL import Image

from components.train.fit import cpu_flags, dtype_policy, mixed_policy
from components.train.models import MODEL_BUILDERS, build_model
from components.train.recipe import builder_kwargs
from serving.contract import CLASS_NAMES

DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "fer2013"
TRAIN_FLOPS_PER_FORWARD = 3


def conv_flops(layer: layers.Layer) -> int:
    """Multiply-adds x 2 of one call of a conv or dense layer (0 for any other layer)."""
    if isinstance(layer, layers.Dense):
        rows = math.prod(layer.input.shape[1:-1])
        return 2 * rows * layer.input.shape[-1] * layer.units
    if not isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D, layers.SeparableConv2D)):
        return 0
    _, h, w, c_out = layer.output.shape
    c_in = layer.input.shape[-1]
    k = math.prod(layer.kernel_size)
    if isinstance(layer, layers.SeparableConv2D):
        m = layer.depth_multiplier
        return 2 * h * w * (k * c_in * m + c_in * m * c_out)
    if isinstance(layer, layers.DepthwiseConv2D):
        return 2 * h * w * k * c_in * layer.depth_multiplier
    return 2 * h * w * k * (c_in // layer.groups) * c_out


def forward_flops(model: keras.Model) -> int:
    """FLOPs of one image's forward pass, nested models included."""
    total = 0
    for layer in model.layers:
        total += forward_flops(layer) if isinstance(layer, keras.Model) else conv_flops(layer)
    return total


def real_batch(source: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` real train faces, classes in turn (float32 [n,48,48,1] 0-255, int labels)."""
    per_class = math.ceil(n / len(CLASS_NAMES))
    images, labels = [], []
    for label, name in enumerate(CLASS_NAMES):
        for path in sorted((source / "train" / name).iterdir())[:per_class]:
            with Image.open(path) as img:
                images.append(np.asarray(img.convert("L"), np.float32))
            labels.append(label)
    order = np.random.default_rng(0).permutation(len(images))[:n]
    return np.stack(images)[order, ..., None], np.array(labels)[order]


class StepClock(keras.callbacks.Callback):
    """When each training step ended."""

    def __init__(self) -> None:
        super().__init__()
        self.ends: list[float] = []

    def on_train_batch_end(self, batch, logs=None) -> None:
        self.ends.append(time.perf_counter())


def measure(architecture: str, x: np.ndarray, y: np.ndarray, batch_size: int, steps: int,
            warmup: int, policy: str | None, options: dict[str, Any] | None = None
            ) -> dict[str, float]:
    keras.utils.set_random_seed(0)
    with dtype_policy(policy):
        model = build_model(architecture, **builder_kwargs(options or {}, architecture))
        model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).cache().repeat()
    model.fit(ds, steps_per_epoch=warmup, epochs=1, verbose=0, shuffle=False)  # tracing
    clock = StepClock()
    model.fit(ds, steps_per_epoch=steps + 1, epochs=1, verbose=0, shuffle=False,
              callbacks=[clock])
    seconds = float(np.median(np.diff(clock.ends)))  # per step, fit's own overhead left out
    images_per_s = batch_size / seconds
    flops = forward_flops(model)
    return {"parameters": model.count_params(), "mflops": flops / 1e6,
            "step_ms": 1000 * seconds, "images_per_s": images_per_s,
            "gflops_per_s": images_per_s * TRAIN_FLOPS_PER_FORWARD * flops / 1e9}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architectures", default=",".join(MODEL_BUILDERS),
                        help="comma-separated zoo names (default: all)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4, help="timed training steps (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="as the recipe's mixed_precision: mixed_float16 on GPUs, "
                        "mixed_bfloat16 on CPUs with AMX or AVX-512 BF16, else float32")
    parser.add_argument("--model-options", type=json.loads, default={},
                        help='builder arguments per architecture, JSON as the pipeline takes '
                        'them: {"configurable_cnn": {"filters": [48, 96, 192, 384]}}')
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    args = parser.parse_args(argv)
    archs = [a.strip() for a in args.architectures.split(",") if a.strip()]
    unknown = sorted(set(archs) - set(MODEL_BUILDERS))
    if unknown:
        parser.error(f"unknown architecture(s) {', '.join(unknown)}; "
                     f"known: {', '.join(MODEL_BUILDERS)}")

    gpus = tf.config.list_logical_devices("GPU")
    mixed = mixed_policy(len(gpus), cpu_flags()) if args.mixed_precision else None
    policies = [None, mixed] if mixed else [None]
    device = f"{len(gpus)} GPU(s)" if gpus else f"CPU ({os.cpu_count()} cores)"
    x, y = real_batch(args.source, args.batch_size * 2)
    print(f"{device}, batch {args.batch_size}, {args.steps} timed steps after {args.warmup}; "
          f"training FLOPs = {TRAIN_FLOPS_PER_FORWARD} x forward")
    if args.mixed_precision and not mixed:
        print("mixed precision: this machine has no GPU and no native bfloat16; float32 only")
    print(f"{'architecture':<18}{'precision':>15}{'params':>12}{'fwd MFLOP/img':>15}"
          f"{'step ms':>10}{'images/s':>10}{'GFLOP/s':>9}")
    for arch in archs:
        for policy in policies:
            r = measure(arch, x, y, args.batch_size, args.steps, args.warmup, policy,
                        args.model_options)
            print(f"{arch:<18}{policy or 'float32':>15}{r['parameters']:>12,}"
                  f"{r['mflops']:>15,.1f}{r['step_ms']:>10,.0f}{r['images_per_s']:>10,.0f}"
                  f"{r['gflops_per_s']:>9,.1f}", flush=True)


if __name__ == "__main__":
    main()
