"""Serving latency and throughput: the local server on 127.0.0.1 vs. an in-process call.

    python -m benchmarks.serving [--model-base serving/model/fer] [--seconds 10]

Starts ``fer-serve`` in a subprocess over the model base path (by default the model this
package ships; any model base the pipeline deployed to works too), then prints what the
served graph does and:
  * single-image latency p50/p99: REST, gRPC, and an in-process call of the same SavedModel;
  * throughput (images/s) at batch 32 with 8 concurrent clients: REST, gRPC, in-process;
each REST/gRPC figure next to its in-process counterpart (ratio).
Targets on a 2-core machine: REST single-image p50 <= 15 ms; REST batch-32 throughput >= 70%
of in-process. Requests use real faces from ../shared/fer2013/test.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from benchmarks.accuracy import served_graph
from components.dataset import FaceDataset
from components.ingest import ingest
from serving.contract import (
    BUNDLED_MODEL_BASE,
    PIXELS_INPUT,
    PROBABILITIES,
    SIGNATURE_PIXELS,
)
from serving.storage import local_versions

ROOT = Path(__file__).resolve().parents[1]
FER_TEST = ROOT.parent / "shared" / "fer2013" / "test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def real_faces(n: int) -> np.ndarray:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ingest(str(FER_TEST), tmp, progress=False)
        images = FaceDataset.load(tmp).images
    return images[np.random.default_rng(0).choice(len(images), n, replace=False)]


def percentiles(samples: list[float]) -> tuple[float, float]:
    ms = np.array(samples) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def latency(call, n: int) -> tuple[float, float]:
    for _ in range(10):
        call()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return percentiles(times)


def throughput(make_call, clients: int, seconds: float, batch: int) -> float:
    stop = time.perf_counter() + seconds
    counts = [0] * clients

    def worker(k: int) -> None:
        call = make_call()
        call()  # warm
        while True:  # every client finishes at least one batch, however slow the model
            call()
            counts[k] += batch
            if time.perf_counter() >= stop:
                break

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-base", default=str(BUNDLED_MODEL_BASE),
                        help="a TF Serving model base (default: the shipped model, "
                             "%(default)s)")
    parser.add_argument("--requests", type=int, default=300, help="single-image requests")
    parser.add_argument("--seconds", type=float, default=10.0, help="per throughput run")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()

    base = Path(args.model_base)
    versions = local_versions(base)
    if not versions:
        sys.exit(f"no model version under {base}")
    model_dir = base / str(versions[-1])
    faces = real_faces(256)
    one = faces[:1, ..., None].astype(np.float32)
    batch = faces[: args.batch, ..., None].astype(np.float32)

    rest_port, grpc_port = free_port(), free_port()
    # The throughput test queues more concurrent batches than the server runs at once, by
    # design: let them wait in line (a minute) rather than be refused 503 after the default
    # 2 s, which is the overload protection benchmarks.soak measures.
    server = subprocess.Popen(
        [sys.executable, "-m", "serving.server", f"--model_base_path={base}",
         f"--rest_api_port={rest_port}", f"--port={grpc_port}", "--rest_api_host=127.0.0.1",
         "--queue_timeout_in_ms=60000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{rest_port}/v1/models/fer:predict"
    try:
        for _ in range(600):
            try:
                if requests.get(url.replace(":predict", ""), timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        else:
            sys.exit("fer-serve did not come up")

        loaded = tf.saved_model.load(str(model_dir))
        fn = loaded.signatures[SIGNATURE_PIXELS]

        def in_process(x):
            return lambda: fn(**{PIXELS_INPUT: tf.constant(x)})[PROBABILITIES].numpy()

        def rest(x):
            body = json.dumps({"instances": x.astype(np.uint8).tolist()}).encode()

            def make():
                session = requests.Session()
                return lambda: session.post(url, data=body, timeout=30).raise_for_status()
            return make

        def grpc_call(x):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "fer"
            request.inputs[PIXELS_INPUT].CopyFrom(tf.make_tensor_proto(x))

            def make():
                stub = prediction_service_pb2_grpc.PredictionServiceStub(
                    grpc.insecure_channel(f"127.0.0.1:{grpc_port}"))
                return lambda: stub.Predict(request, timeout=30)
            return make

        print(f"model: {model_dir}  cpus: {os.cpu_count()}  faces: real FER2013 test images")
        print(f"served graph: {served_graph(model_dir)}")
        lat = {"in-process": latency(in_process(one), args.requests),
               "REST": latency(rest(one)(), args.requests),
               "gRPC": latency(grpc_call(one)(), args.requests)}
        ref = lat["in-process"][0]
        print("single-image latency (ms)      p50      p99   p50 vs in-process")
        for name, (p50, p99) in lat.items():
            print(f"  {name:<26} {p50:>7.2f}  {p99:>7.2f}   {p50 / ref:>5.1f}x")
        tput = {"in-process": throughput(lambda: in_process(batch), args.clients, args.seconds,
                                         args.batch),
                "REST": throughput(rest(batch), args.clients, args.seconds, args.batch),
                "gRPC": throughput(grpc_call(batch), args.clients, args.seconds, args.batch)}
        ref_t = tput["in-process"]
        print(f"throughput, batch {args.batch}, {args.clients} clients (images/s)   ratio to in-process")
        for name, value in tput.items():
            print(f"  {name:<26} {value:>9,.0f}   {value / ref_t:>6.0%}")
        print(f"targets: REST single p50 <= 15 ms: "
              f"{'met' if lat['REST'][0] <= 15 else 'MISSED'} ({lat['REST'][0]:.2f} ms); "
              f"REST throughput >= 70% of in-process: "
              f"{'met' if tput['REST'] >= 0.7 * ref_t else 'MISSED'} ({tput['REST'] / ref_t:.0%})")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
