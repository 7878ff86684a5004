# Length: the argument parsers of eight commands, each flag with its help text; what the
# commands do lives in the modules they call (pipeline.*, serving.predict).
"""``fer-pipeline``: the project's one command line entry point.

Subcommands:
  data     ingest, preprocess and class-weight a FER2013 source; print the manifest summary
  run      run the whole pipeline locally (kfp.local): train, gate, export, deploy
  compile  write the pipeline's KFP IR YAML (for a Kubeflow Pipelines cluster)
  submit   start a run of the pipeline on a Kubeflow Pipelines cluster
  predict  emotions of the faces in photos: in-process, or from a server (REST or gRPC)
  deploy   evaluate, gate, export and deploy models that runs trained (several: an ensemble)
  release  make a deployed version the package's bundled model
  web      the web page for people, in front of a TF Serving REST endpoint
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from components.class_weights import MODES as WEIGHT_MODES
from components.ingest.ingest import FORMATS, MANIFEST_FILE
from components.train.recipe import default_value, field_type, recipe_fields
from serving.contract import BUNDLED_MODEL_BASE

# What each failure a command reports means for its exit status: the exception's class
# (by module and name, so that no command's heavy imports are needed to read the table) ->
# exit code. The first entry that the exception is an instance of wins; anything else is a
# bug and shows its traceback. 2: the request was wrong (a bad setting, unusable data, a
# missing file); 1: the work itself failed (a pipeline step, a server's answer).
EXIT_CODES: tuple[tuple[str, int], ...] = (
    ("pipeline.local_run.PipelineRunError", 1),
    ("serving.client.ClientError", 1),
    ("components.dataset.DataError", 2),
    ("components.train.recipe.RecipeError", 2),
    ("pipeline.submit.SubmitError", 2),
    ("pipeline.release.ReleaseError", 2),
    ("builtins.ValueError", 2),  # arguments a command checked (deploy's models, a profile)
    ("builtins.OSError", 2),  # a file that is missing or unreadable
)


def exit_code(exc: BaseException) -> int | None:
    """The exit status :data:`EXIT_CODES` gives ``exc``; ``None`` when it names none."""
    names = {f"{c.__module__}.{c.__qualname__}" for c in type(exc).__mro__}
    return next((code for name, code in EXIT_CODES if name in names), None)


def _cmd_data(args: argparse.Namespace) -> int:
    from components.dataset import DataError
    from components.report import format_summary
    from pipeline.data_steps import run_data_steps

    out = Path(args.out)
    manifest = out / "ingested" / MANIFEST_FILE
    manifest.unlink(missing_ok=True)
    try:
        result = run_data_steps(args.source, out, args.format, args.val_fraction,
                                args.test_fraction, args.seed, args.drop_duplicates,
                                args.class_weights, report=not args.no_report,
                                progress=not args.quiet,
                                max_train_per_class=args.max_train_per_class)
    except DataError:
        if manifest.is_file():  # ingest wrote what it read before the data was found unusable
            print(format_summary(json.loads(manifest.read_text())))
        raise
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_summary(result["manifest"], result["preprocess"], result["class_weights"]))
        print(f"\nwritten to {args.out}/ (dataset/, class_weights.json"
              f"{', report/report.html' if result['report'] else ''})")
    return 0


RECIPE_DEST = "recipe_"  # argparse dest prefix of the recipe flags


def _pipeline_parameters(args: argparse.Namespace) -> dict:
    """The run's pipeline parameters: the profile, the flags over it, and the recipe built
    and checked (a bad setting raises RecipeError naming it, before anything runs)."""
    from pipeline.profiles import profile_parameters

    archs = [a.strip() for a in args.architectures.split(",")] if args.architectures else None
    recipe = {k.removeprefix(RECIPE_DEST): v for k, v in vars(args).items()
              if k.startswith(RECIPE_DEST) and v is not None}
    params = profile_parameters(
        args.profile, recipe, source=args.source, serving_base=args.serving_base,
        model_name=args.model_name, architectures=archs, f1_threshold=args.f1_threshold,
        min_improvement=args.min_improvement, max_latency_ms=args.max_latency_ms,
        min_win_probability=args.min_win_probability, seed=args.seed,
        max_train_per_class=args.max_train_per_class, checkpoint_root=args.checkpoint_root,
        model_options=args.model_options, classic_baseline=args.classic_baseline,
        teacher=args.teacher, label_map=args.label_map,
        ensemble=args.ensemble, folds=args.folds, cv_final=args.cv_final,
    )
    from components.cv import check_cv

    check_cv(params.get("folds", 0), params.get("cv_final", "retrain"),
             params.get("ensemble", False), params.get("teacher", ""))
    from components.train.models import MODEL_BUILDERS

    unknown = sorted(set(params["architectures"]) - set(MODEL_BUILDERS))
    if unknown:
        raise ValueError(f"unknown architecture(s) {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(MODEL_BUILDERS))}")
    return params


def _cmd_run(args: argparse.Namespace) -> int:
    from pipeline.local_run import format_run_summary, run_local
    from serving.logs import verbose_requested

    params = _pipeline_parameters(args)
    summary = run_local(params, args.pipeline_root, verbose=verbose_requested(args.verbose))
    print(format_run_summary(summary))
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


def _train_resources(args: argparse.Namespace):
    from pipeline.cluster import TrainResources

    return TrainResources(args.accelerator_type, args.gpus, args.train_cpu, args.train_memory)


def _cmd_compile(args: argparse.Namespace) -> int:
    from pipeline.pipeline import compile_pipeline

    params = _pipeline_parameters(args)
    print(compile_pipeline(args.output, params, image=args.image,
                           resources=_train_resources(args), volumes=tuple(args.volume),
                           enable_caching=not args.no_cache))
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    from pipeline.submit import submit

    params = _pipeline_parameters(args)
    result = submit(args.host, params, image=args.image, resources=_train_resources(args),
                    volumes=tuple(args.volume), experiment=args.experiment,
                    run_name=args.run_name, namespace=args.namespace,
                    enable_caching=not args.no_cache, wait=args.wait,
                    timeout_s=args.timeout, poll_s=args.poll_interval)
    print(f"run:      {result['run_id']} (experiment {result['experiment']})")
    print(f"url:      {result['url']}")
    if "state" in result:
        print(f"state:    {result['state']}" + (f": {result['error']}" if "error" in result else ""))
        print(f"gate:     {result['gate']}")
        return 0 if result["state"] == "SUCCEEDED" else 1
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from serving.video import VideoOptions, is_video, make_client, run_videos

    videos = [p for p in args.images if is_video(p)]
    photos = [p for p in args.images if not is_video(p)]
    if videos and (args.no_detect or args.explain):
        raise ValueError("--no-detect and --explain are for photos, not videos")
    texts, code, found = [], 0, []
    if photos:
        from serving.predict import run_predict

        text, code = run_predict(photos, args.url, args.grpc, args.model_name,
                                 not args.no_detect, args.json, args.annotate, args.timeout,
                                 args.model_dir, args.tta, args.explain, args.detector)
        found, texts = (json.loads(text), []) if args.json else ([], [text])
    if videos:
        options = VideoOptions(args.stride, args.detect_every, args.smoothing,
                               detector=args.detector, tta=args.tta, min_face=args.min_face)
        text, video_code, summaries = run_videos(
            videos, lambda: make_client(args.url, args.grpc, args.model_name, args.timeout,
                                        args.model_dir),
            options, args.output, args.json, progress=True, verbose=args.verbose,
            log=sys.stderr)
        found += summaries
        texts.append(text)
        code = max(code, video_code)
    print(json.dumps(found, indent=2) if args.json else "\n".join(texts))
    return code


def _cmd_web(args: argparse.Namespace) -> int:
    from serving.limits import Limits
    from serving.web.app import run_web

    limits = Limits(max_image_pixels=args.max_image_pixels, max_body_bytes=args.max_body_bytes)
    return run_web(args.url, args.model_name, args.host, args.port, limits, args.timeout)


def _cmd_release(args: argparse.Namespace) -> int:
    from pipeline.release import release

    notes = args.notes.read_text() if args.notes else ""
    result = release(args.version_dir, args.dest, notes)
    print(f"released {args.version_dir} -> {result['path']} ({result['bytes'] / 1e6:.1f} MB; "
          f"accuracy {result['accuracy']:.4f}, macro F1 {result['macro_f1']:.4f}); "
          f"model card {result['card']}")
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    from pipeline.deploy_models import evaluate_and_deploy

    result = evaluate_and_deploy(args.models, args.dataset, args.out, args.serving_base,
                                 args.model_name, args.tta, args.logit_adjustment,
                                 args.f1_threshold, args.min_improvement,
                                 args.classic_baseline, args.max_latency_ms,
                                 args.min_win_probability)
    deployed = result["deployment"]
    if deployed is None:
        print(f"not deployed: {result['evaluation']['gate']['reason']}")
        return 1
    print(f"{deployed['reason']} -> {deployed['path']}")
    return 0


def model_options(text: str) -> dict:
    """``--model-options``: a JSON object mapping architecture names to builder arguments."""
    from components.train.models import MODEL_BUILDERS

    options = _json_object(text)
    if not all(isinstance(v, dict) for v in options.values()):
        raise argparse.ArgumentTypeError('expected {"architecture": {"argument": value}, ...}')
    unknown = sorted(set(options) - set(MODEL_BUILDERS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown architecture(s) {', '.join(unknown)}")
    return options


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def add_recipe_arguments(group: argparse._ArgumentGroup) -> None:
    """One flag per recipe field (``--label-smoothing`` for ``label_smoothing``), typed,
    with its help text and choices, defaulting to ``None``: the profile's value."""
    for f in recipe_fields():
        kind, flag = field_type(f.name), "--" + f.name.replace("_", "-")
        default = default_value(f.name)
        text = default if isinstance(default, str) else json.dumps(default)
        shown = "" if default is None else f" (recipe default: {text})"
        kwargs = {"dest": RECIPE_DEST + f.name, "default": None,
                  "help": f"{f.metadata['help']}{shown}"}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind is dict:
            kwargs.update(type=_json_object, metavar="JSON")
        else:
            kwargs["type"] = kind
            if f.metadata.get("choices"):
                kwargs["choices"] = list(f.metadata["choices"])
            else:
                kwargs["metavar"] = f.name.upper()
        group.add_argument(flag, **kwargs)


def label_map(spec: str) -> str:
    """A ``--label-map`` value, checked: a named map or JSON (a .json file is read here, so
    a compiled or submitted pipeline carries its content, not a path on this machine)."""
    from components.labels import FOLDERS, LabelMapError, label_set

    text = spec.strip()
    if text == FOLDERS:  # known only once the source is read
        return text
    try:
        label_set(text)
    except LabelMapError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return Path(text).read_text() if text.endswith(".json") else text


def _add_pipeline_arguments(p: argparse.ArgumentParser, source_default: str | None) -> None:
    from pipeline.profiles import PROFILES

    p.add_argument("--profile", choices=list(PROFILES), default="smoke",
                   help="parameter set (default: %(default)s); the flags below override it")
    p.add_argument("--source", default=source_default,
                   help="FER2013 source: directory, .zip, .csv or gs://bucket/prefix"
                   + (" (default: %(default)s)" if source_default else
                      " (no default: the run's parameter, given when it is started)"))
    p.add_argument("--serving-base", default="runs/serving",
                   help="TF Serving model base: local directory or gs:// (default: %(default)s)")
    p.add_argument("--model-name", default="fer",
                   help="the served model's name (default: %(default)s)")
    p.add_argument("--architectures", help="comma-separated, e.g. baseline_cnn,vgg19 "
                   "(default: the profile's)")
    p.add_argument("--model-options", type=model_options, metavar="JSON",
                   help='builder arguments per architecture, e.g. '
                        '\'{"configurable_cnn": {"filters": [64, 128, 256]}}\'')
    p.add_argument("--f1-threshold", type=float, help="minimum test macro F1 to deploy")
    p.add_argument("--min-improvement", type=float,
                   help="macro F1 by which a candidate must beat the deployed champion")
    p.add_argument("--max-latency-ms", type=float, metavar="MS",
                   help="latency budget: block a candidate whose single-face p50, measured "
                        "in-process as exported, is over it (0: no budget)")
    p.add_argument("--min-win-probability", type=float, metavar="P",
                   help="require the candidate to beat the deployed champion with at least "
                        "this probability (paired bootstrap on the same faces; 0: not "
                        "required)")
    p.add_argument("--seed", type=int, default=42,
                   help="seeds the splits, sampling and training (default: %(default)s)")
    p.add_argument("--max-train-per-class", type=int, metavar="N",
                   help="train on a seeded sample of at most N faces per class (0: all; "
                        "default: the profile's)")
    p.add_argument("--checkpoint-root", default=None,
                   help="keep per-epoch checkpoints here so a killed run resumes")
    p.add_argument("--teacher", help="distil every variant from this served model: "
                   "'champion' (the deployed one), 'bundled' (the shipped one) or a SavedModel "
                   "version directory; its TTA signature is used when it has one")
    p.add_argument("--ensemble", action=argparse.BooleanOptionalAction,
                   help="with several --architectures, serve the average of all of them "
                        "instead of the best one")
    p.add_argument("--folds", type=int, metavar="K",
                   help="compare the architectures by K-fold cross-validation over train + "
                        "val: K stratified, seeded folds, a train task per architecture and "
                        "fold, the best mean val macro F1 wins (0 or 1: off, the default)")
    p.add_argument("--cv-final", choices=["retrain", "ensemble"],
                   help="with --folds, what goes on to the test evaluation: the winner "
                        "trained on the splits as they are (retrain, the default) or the "
                        "average of its fold models (ensemble)")
    p.add_argument("--label-map", type=label_map, metavar="MAP",
                   help="the label set: fer2013 (the default), fer2013-6 (disgust merged into "
                        "angry), fer2013+contempt, folders (the class folders' names), or a "
                        "JSON object or .json file {\"classes\": [...], \"map\": {folder: "
                        "class}}; classes map by name, never by alphabetical order")
    p.add_argument("--classic-baseline", action=argparse.BooleanOptionalAction,
                   help="also fit HOG + linear SVM and report it beside the model")
    add_recipe_arguments(p.add_argument_group(
        "training recipe (defaults: the profile's, else the recipe default shown)"))


def _add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    from pipeline.cluster import TRAIN_IMAGE, TrainResources, parse_volume

    res = TrainResources()
    p.add_argument("--image", default=TRAIN_IMAGE,
                   help="container image every task runs on (built from Dockerfile.train; "
                   "default: %(default)s)")
    p.add_argument("--no-cache", action="store_true",
                   help="turn KFP's execution cache off for every task (it is on by default)")
    p.add_argument("--gpus", type=int, default=res.accelerator_count, metavar="N",
                   help="accelerators for each train task (default: %(default)s; 0 on a "
                   "cluster without GPUs, such as kind)")
    p.add_argument("--accelerator-type", default=res.accelerator_type,
                   help="Kubernetes resource name of the accelerator (default: %(default)s)")
    p.add_argument("--train-cpu", default=res.cpu_request,
                   help="CPU request of a train task (default: %(default)s)")
    p.add_argument("--train-memory", default=res.memory_request,
                   help="memory request of a train task (default: %(default)s)")

    def volume(spec: str) -> tuple[str, str]:
        try:
            return parse_volume(spec)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    p.add_argument("--volume", type=volume, action="append", default=[],
                   metavar="CLAIM:/PATH", help="mount this PersistentVolumeClaim into every "
                   "task (repeatable), e.g. fer-data:/data for --source /data/fer2013")


def build_parser() -> argparse.ArgumentParser:
    """The ``fer-pipeline`` argument parser: one subcommand per job, each bound to its
    ``_cmd_*`` function."""
    parser = argparse.ArgumentParser(
        prog="fer-pipeline", description="Facial emotion recognition on FER2013: run the "
        "pipeline here or on a Kubeflow cluster, and use the models it deploys.",
        epilog="Quiet by default: --verbose (or FER_VERBOSE=1) shows every log line.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", "-v", action="store_true",
                        help="show everything: each step's full log, TensorFlow's own lines "
                             "(also FER_VERBOSE=1)")

    data = sub.add_parser("data", parents=[common], help="ingest, split and class-weight a FER2013 source",
                          description="Ingest a FER2013 source (directory, .zip, .csv or "
                          "gs://bucket/prefix), split it, compute class weights and print "
                          "the manifest summary.")
    data.add_argument("source", help="directory, .zip, .csv, or gs://bucket/prefix")
    data.add_argument("--out", default="runs/data", help="output directory (default: %(default)s)")
    data.add_argument("--format", choices=FORMATS, default="auto",
                      help="source format (default: %(default)s: images if any, else CSV)")
    data.add_argument("--val-fraction", type=float, default=0.1,
                      help="val slice of train when the source has no val split "
                           "(default: %(default)s)")
    data.add_argument("--test-fraction", type=float, default=0.1,
                      help="test share when the source has no split at all "
                           "(default: %(default)s)")
    data.add_argument("--seed", type=int, default=42,
                      help="seeds the splits and the sampling (default: %(default)s)")
    data.add_argument("--drop-duplicates", action="store_true",
                      help="drop train images that also appear in val or test")
    data.add_argument("--max-train-per-class", type=int, default=0, metavar="N",
                      help="keep a seeded sample of at most N train faces per class (0: all)")
    data.add_argument("--class-weights", choices=WEIGHT_MODES, default="balanced",
                      help="how to weight the classes (default: %(default)s)")
    data.add_argument("--no-report", action="store_true", help="skip the charts and HTML report")
    data.add_argument("--json", action="store_true", help="print the full result as JSON")
    data.add_argument("--quiet", action="store_true", help="no progress bar")
    data.set_defaults(func=_cmd_data)

    run = sub.add_parser("run", parents=[common], help="run the whole pipeline locally with kfp.local",
                         description="Run the pipeline on this machine (kfp.local, no cluster "
                         "and no Docker) and print per-variant metrics, the winner, the gate "
                         "decision and the deployed version.")
    _add_pipeline_arguments(run, source_default="../shared/fer2013")
    run.add_argument("--pipeline-root", default="runs/kfp",
                     help="where kfp.local keeps the artifacts (default: %(default)s)")
    run.add_argument("--summary-json", help="also write the run summary to this file")
    run.set_defaults(func=_cmd_run)

    comp = sub.add_parser("compile", parents=[common], help="write the pipeline's KFP IR YAML",
                          description="Compile the pipeline to KFP IR YAML; the profile and "
                          "flags become the parameters' defaults.")
    _add_pipeline_arguments(comp, source_default=None)
    _add_cluster_arguments(comp)
    comp.set_defaults(profile="full")
    comp.add_argument("--output", "-o", default="fer_pipeline.yaml",
                      help="the YAML file to write (default: %(default)s)")
    comp.set_defaults(func=_cmd_compile)

    subm = sub.add_parser("submit", parents=[common], help="run the pipeline on a Kubeflow Pipelines cluster",
                          description="Compile the pipeline for the cluster's image and start "
                          "a run through kfp.Client; print the run's URL and, with --wait, its "
                          "final state and the gate decision. --source and --serving-base must "
                          "be locations the cluster can read, e.g. gs:// URIs.")
    _add_pipeline_arguments(subm, source_default=None)
    _add_cluster_arguments(subm)
    subm.set_defaults(profile="full", serving_base=None)
    subm.add_argument("--host", required=True,
                      help="KFP API endpoint, e.g. http://localhost:8080 (port-forwarded UI)")
    subm.add_argument("--namespace", help="Kubernetes namespace (multi-user Kubeflow)")
    subm.add_argument("--experiment", default="fer", help="experiment name (default: fer)")
    subm.add_argument("--run-name", help="name of the run in the UI")
    subm.add_argument("--wait", action="store_true", help="wait for the run to finish")
    subm.add_argument("--timeout", type=float, default=24 * 3600,
                      help="seconds to wait with --wait (default: a day)")
    subm.add_argument("--poll-interval", type=float, default=10.0, metavar="SECONDS",
                      help="how often --wait asks for the run's state (default: 10)")
    subm.set_defaults(func=_cmd_submit)

    from serving.faces import DEFAULT_DETECTOR, DETECTORS

    pred = sub.add_parser("predict", parents=[common], help="emotions of the faces in photos",
                          description="Detect faces (MTCNN, or OpenCV's Haar cascade), align "
                          "them by their landmarks, send them in "
                          "batched requests to TF Serving or fer-serve (--url, --grpc), or run "
                          "them through a SavedModel in-process (by default the bundled "
                          "released model), and print each face's box, top emotion and all "
                          "seven probabilities. An image that is already a face crop (at most "
                          "128 px, about square, like FER2013's 48x48 faces) is classified "
                          "whole, and the output says so.")
    pred.add_argument("images", nargs="+", metavar="IMAGE",
                      help="image files, folders (searched recursively for images) or globs "
                           "(quote them: 'photos/*.jpg'); or videos (see below)")
    where = pred.add_mutually_exclusive_group()
    where.add_argument("--url", help="a TF Serving REST endpoint, e.g. http://127.0.0.1:8501")
    where.add_argument("--grpc", metavar="HOST:PORT", help="a TF Serving gRPC endpoint")
    where.add_argument("--model-dir", default=str(BUNDLED_MODEL_BASE),
                       help="with no server: run this SavedModel (a version directory or a "
                            "model base) in-process (default: the bundled released model)")
    pred.add_argument("--model-name", default="fer",
                      help="the served model's name (default: %(default)s)")
    pred.add_argument("--no-detect", action="store_true",
                      help="treat every image as a face crop: no face detection")
    pred.add_argument("--detector", choices=DETECTORS, default=DEFAULT_DETECTOR,
                      help="how faces are found: mtcnn (finds turned, small and large faces, "
                           "aligns them by their eyes) or haar (OpenCV's frontal-face cascade, "
                           "faster) (default: %(default)s)")
    pred.add_argument("--tta", action="store_true",
                      help="use the model's test-time augmentation signature (serving_tta): "
                           "averaged views, more accurate, one network pass per view")
    pred.add_argument("--explain", metavar="DIR",
                      help="write each face's Grad-CAM overlay (where the network looked, for "
                           "its top emotion) here, through the model's explain signature")
    pred.add_argument("--json", action="store_true", help="print JSON instead of a table")
    pred.add_argument("--annotate", metavar="DIR", help="write annotated copies of the photos here")
    pred.add_argument("--timeout", type=float, default=30.0,
                      help="seconds to wait for a server's answer (default: %(default)s)")
    from serving.video import DEFAULT_DETECT_EVERY, DEFAULT_SMOOTHING

    video = pred.add_argument_group(
        "videos", "a file named .mp4 .avi .mov .mkv .webm .m4v .mpg .mpeg or .wmv is a video: "
        "its faces are tracked across frames, and an annotated video, a CSV and a JSON (a row "
        "per analysed frame per face track) and a timeline PNG per track are written")
    video.add_argument("--output", metavar="DIR",
                       help="where a video's outputs go (default: <video name>_emotions)")
    video.add_argument("--stride", type=int, default=1, metavar="N",
                       help="analyse every Nth frame (default: %(default)s)")
    video.add_argument("--detect-every", type=int, default=DEFAULT_DETECT_EVERY, metavar="N",
                       help="run the face detector on every Nth analysed frame and follow the "
                            "faces in between (every analysed frame is classified) "
                            "(default: %(default)s)")
    video.add_argument("--min-face", type=int, default=0, metavar="PX",
                       help="the smallest face looked for, in pixels (default: 1/12 of the "
                            "frame's shorter side, at least 20: 40 at 640x480); smaller is "
                            "slower")
    video.add_argument("--smoothing", type=float, default=DEFAULT_SMOOTHING, metavar="S",
                       help="each track's moving average of probabilities: weight of the past, "
                            "0 to under 1; 0 is none (default: %(default)s)")
    pred.set_defaults(func=_cmd_predict)

    from components.train.recipe import TTA_MODES

    dep = sub.add_parser("deploy", parents=[common], help="evaluate, gate, export and deploy trained models",
                         description="Run the pipeline's evaluate, gate, export and deploy "
                         "steps on models that earlier runs trained (their train-op/model "
                         "directories): one as it is, e.g. with another --tta, or several "
                         "averaged into an ensemble calibrated on val. The models must come "
                         "from runs on the same source, seed and split fractions as --dataset.")
    dep.add_argument("models", nargs="+", help="trained model directories (model.keras)")
    dep.add_argument("--dataset", required=True,
                     help="the runs' split dataset (a preprocess-op/splits directory)")
    dep.add_argument("--out", default="runs/deploy",
                     help="work directory: model/ (an ensemble), evaluation/, saved_model/ "
                          "(default: %(default)s)")
    dep.add_argument("--serving-base", default="runs/serving")
    dep.add_argument("--model-name", default="fer")
    dep.add_argument("--tta", choices=TTA_MODES, default="none")
    dep.add_argument("--logit-adjustment", action=argparse.BooleanOptionalAction, default=True,
                     help="an ensemble's prior correction, tuned on val (default: on)")
    dep.add_argument("--f1-threshold", type=float, default=0.0)
    dep.add_argument("--min-improvement", type=float, default=0.0)
    dep.add_argument("--max-latency-ms", type=float, default=0.0, metavar="MS",
                     help="latency budget for the single-face p50 (default: 0, none)")
    dep.add_argument("--min-win-probability", type=float, default=0.0, metavar="P",
                     help="probability of beating the champion, paired on the same faces, "
                          "the gate requires (default: 0, not required)")
    dep.add_argument("--classic-baseline", action=argparse.BooleanOptionalAction,
                     default=False, help="also fit HOG + linear SVM and report it beside "
                     "the model (the model card quotes it)")
    dep.set_defaults(func=_cmd_deploy)

    rel = sub.add_parser("release", parents=[common], help="make a deployed version the bundled model",
                         description="Copy a deployed SavedModel version into the package "
                         "(serving/model/fer/1) and write its model card from the metrics "
                         "that travel with it.")
    rel.add_argument("version_dir", help="a version directory the pipeline deployed")
    rel.add_argument("--notes", type=Path, help="Markdown appended to the model card")
    rel.add_argument("--dest", default=str(BUNDLED_MODEL_BASE), help="model base to release into")
    rel.set_defaults(func=_cmd_release)

    from serving.limits import Limits

    web = sub.add_parser("web", parents=[common], help="the web page, in front of a TF Serving "
                         "REST endpoint", description="Serve the web page (the one fer-serve "
                         "shows at /) in front of any TF Serving REST endpoint: a person "
                         "chooses, drops or pastes a photo or uses the webcam and sees each "
                         "face's emotion and probabilities (and, when the model has the "
                         "explain signature, where it looked). Faces are found here and sent "
                         "to the model in one predict request.")
    web.add_argument("--url", required=True,
                     help="the TF Serving REST endpoint, e.g. http://127.0.0.1:8501")
    web.add_argument("--model-name", default="fer",
                     help="the served model's name (default: %(default)s)")
    web.add_argument("--host", default="127.0.0.1",
                     help="address the page listens on (default: %(default)s; 0.0.0.0 for "
                          "every interface: the webcam then needs https or localhost)")
    web.add_argument("--port", type=int, default=8080,
                     help="port the page listens on (default: %(default)s)")
    web.add_argument("--max-image-pixels", type=int, default=Limits().max_image_pixels,
                     metavar="N", help="refuse images of more pixels, read from their header "
                     "before decoding (default: %(default)s)")
    web.add_argument("--max-body-bytes", type=int, default=Limits().max_body_bytes,
                     metavar="N", help="refuse larger uploads (default: %(default)s)")
    web.add_argument("--timeout", type=float, default=30.0,
                     help="seconds to wait for the model server's answer (default: "
                          "%(default)s)")
    web.set_defaults(func=_cmd_web)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command ``argv`` names (default: the process's arguments); returns its exit
    status (:data:`EXIT_CODES` for the failures a command reports)."""
    from serving.logs import quiet_native_logs, verbose_requested

    args = build_parser().parse_args(argv)
    verbose = verbose_requested(args.verbose)
    if argv is None and not verbose:  # the process is ours (the console script), not a test's
        quiet_native_logs()
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not verbose:  # TensorFlow's Python warnings (retracing, deprecations) are for its
        # developers, not for the person running a command
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        return args.func(args)
    except Exception as exc:
        code = exit_code(exc)
        if code is None:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
