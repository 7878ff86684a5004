"""Label sets other than FER2013's seven: six classes (disgust merged into anger) and eight
(an extra class assembled here from real faces in ../shared, nothing committed), each run
end to end with kfp.local, deployed, served by fer-serve with its labels and output width,
and printed by the predict CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests

from components.dataset import FaceDataset
from components.ingest import ingest
from components.labels import LabelMapError, label_set
from pipeline.cli import main
from serving.client import GrpcClient, LocalClient, RestClient
from serving.contract import CLASS_NAMES, read_labels
from tests.helpers import face_pixels, make_subset, real_faces

SIX = ("angry", "fear", "happy", "sad", "surprise", "neutral")
EIGHT = (*CLASS_NAMES, "contempt")


# --- label maps ---------------------------------------------------------------------------

def test_the_default_is_fer2013_by_name_not_alphabetical_order():
    labels = label_set("")
    assert labels.classes == CLASS_NAMES and labels.is_fer2013
    assert [labels.class_id(f) for f in ("neutral", "Sadness", "3", "surprised")] == [6, 4, 3, 5]
    assert labels.class_id("contempt") is None


def test_six_classes_merge_disgust_into_anger():
    labels = label_set("fer2013-6")
    assert labels.classes == SIX and not labels.is_fer2013
    # folder names, their aliases and FER2013 ids (as a CSV gives them) all follow the map
    assert [labels.class_id(f) for f in ("angry", "disgust", "Disgusted", "1", "0")] == [0] * 5
    assert [labels.class_id(f) for f in ("fear", "happy", "sad", "surprise", "neutral")] == [
        1, 2, 3, 4, 5]


def test_eight_classes_from_the_folders_keep_fer2013_ids_and_add_the_new_one_after():
    labels = label_set("folders", ["neutral", "contempt", "angry", "Disgust", "fear", "happy",
                                   "sad", "surprise"])
    assert labels.classes == EIGHT  # not sorted: angry, contempt, disgust, ...
    assert labels.class_id("contempt") == 7 and labels.class_id("neutral") == 6
    assert label_set("fer2013+contempt").classes == EIGHT


def test_a_json_map_orders_and_merges_by_name(tmp_path):
    spec = {"classes": ["positive", "negative", "other"],
            "map": {"happy": "positive", "angry": "negative", "disgust": "negative",
                    "sad": "negative", "fear": "negative", "surprise": "other",
                    "neutral": "other"}}
    inline = label_set(json.dumps(spec))
    (tmp_path / "map.json").write_text(json.dumps(spec))
    assert label_set(str(tmp_path / "map.json")) == inline
    assert [inline.class_id(f) for f in ("happiness", "Anger", "5", "neutral")] == [0, 1, 2, 2]


@pytest.mark.parametrize("spec, message", [
    ("fer2014", "unknown label map 'fer2014'"),
    ("{not json", "not valid JSON"),
    ('{"classes": ["angry"]}', "two or more distinct"),
    ('{"classes": ["a", "a"]}', "two or more distinct"),
    ('{"classes": ["Happy Face", "sad"]}', "lower-case letters"),
    ('{"classes": ["happy", "sad"], "map": {"angry": "mad"}}', "not among the classes"),
    ('{"labels": ["happy", "sad"]}', "'classes'"),
    ("missing.json", "cannot read the label map missing.json"),
])
def test_bad_label_maps_are_named(spec, message):
    with pytest.raises(LabelMapError, match=message):
        label_set(spec)


def test_the_cli_refuses_a_bad_label_map_before_any_step(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["run", "--label-map", "fer2014", "--pipeline-root", str(tmp_path / "kfp")])
    assert exited.value.code == 2
    assert "unknown label map 'fer2014'" in capsys.readouterr().err
    assert not (tmp_path / "kfp").exists()


# --- ingest -------------------------------------------------------------------------------

def test_ingest_merges_disgust_into_anger(small_fer, tmp_path):
    manifest = ingest(str(small_fer), tmp_path, progress=False, label_map="fer2013-6")
    assert manifest["class_names"] == list(SIX) and manifest["label_map"] == {
        "disgust": "angry"}
    assert manifest["counts"]["train"] == {"angry": 60, "fear": 30, "happy": 30, "sad": 30,
                                           "surprise": 30, "neutral": 30}
    data = FaceDataset.load(tmp_path)
    assert data.class_names == SIX and data.labels.max() == 5
    assert manifest["accepted"] == len(data) == 280  # nothing lost


def test_a_csv_follows_the_label_map_and_counts_every_row(tmp_path):
    from components.ingest.readers import decode_face

    rows = ["emotion,pixels,Usage"]
    for emotion, name in enumerate(CLASS_NAMES):
        for path in real_faces("train", name, 2):
            pixels = " ".join(map(str, decode_face(path.read_bytes()).ravel()))
            rows.append(f"{emotion},{pixels},Training")
    (tmp_path / "fer.csv").write_text("\n".join(rows) + "\n")
    custom = json.dumps({"classes": ["happy", "sad"], "map": {"neutral": "sad"}})
    manifest = ingest(str(tmp_path / "fer.csv"), tmp_path / "out", progress=False,
                      label_map=custom)
    # happy, sad and neutral rows are kept; the others have no class and are rejected
    assert manifest["counts"]["train"] == {"happy": 2, "sad": 4}
    assert manifest["items_read"] == 14 == manifest["accepted"] + manifest["rejected"]
    assert manifest["rejection_reasons"] == {"label_not_in_label_set": 8}


def test_a_folder_outside_the_label_set_is_a_clear_error(small_fer, tmp_path):
    with pytest.raises(Exception, match="has no class for: 'disgust'"):
        ingest(str(small_fer), tmp_path, progress=False,
               label_map=json.dumps({"classes": list(SIX)}))


# --- end to end: 6 and 8 classes through the pipeline, fer-serve and the predict CLI -----

@pytest.fixture(scope="module")
def eight_class_source(tmp_path_factory) -> Path:
    """FER2013's seven classes plus ``contempt``, assembled from real faces of ../shared
    (FER2013 has no contempt: faces from the end of its neutral folders stand in, which is
    enough to run the label set end to end; no accuracy is claimed)."""
    root = make_subset(tmp_path_factory.mktemp("eight") / "faces", {"train": 30, "test": 10})
    for split, n in (("train", 30), ("test", 10)):
        target = root / split / "contempt"
        target.mkdir()
        for path in sorted((real_faces(split, "neutral", 400)))[-n:]:
            shutil.copy(path, target / path.name)
    return root


def _run(source: Path, label_map: str, root: Path) -> Path:
    code = main(["run", "--profile", "smoke", "--source", str(source), "--label-map", label_map,
                 "--serving-base", str(root / "serving"), "--pipeline-root", str(root / "kfp"),
                 "--max-train-per-class", "0", "--f1-threshold", "0", "--seed", "5",
                 "--model-options", '{"baseline_cnn": {"dense_units": 32}}'])
    assert code == 0
    return root / "serving" / "fer" / "1"


@pytest.mark.parametrize("case", ["six", "eight"])
def test_a_label_set_runs_end_to_end_and_is_served_with_its_labels(
        case, small_fer, eight_class_source, tmp_path, serve, capsys):
    source, label_map, names = {
        "six": (small_fer, "fer2013-6", SIX),
        "eight": (eight_class_source, "folders", EIGHT)}[case]
    version = _run(source, label_map, tmp_path)
    out = capsys.readouterr().out
    assert "deployed: version 1" in out
    # the export: labels.txt, the output width, the class_names signature
    assert read_labels(version) == names
    record = json.loads((version / "assets.extra" / "metrics.json").read_text())
    assert record["class_names"] == list(names) and list(record["per_class"]) == list(names)
    assert len(record["confusion_matrix"]) == len(names)

    server = serve(tmp_path / "serving" / "fer")
    rest = RestClient(f"http://127.0.0.1:{server.rest_port}", "fer")
    grpc_client = GrpcClient(f"127.0.0.1:{server.grpc_port}", "fer")
    try:
        assert rest.class_names() == grpc_client.class_names() == names
        faces = np.stack([face_pixels(p) for p in real_faces("test", "happy", 3)])
        result = rest.predict_pixels(faces)
        assert result["probabilities"].shape == (3, len(names))
        assert result["class_name"] == [names[i] for i in result["class_id"]]
        assert grpc_client.predict_pixels(faces)["probabilities"].shape == (3, len(names))
        metadata = rest.metadata()["metadata"]["signature_def"]["signature_def"]
        dims = metadata["serving_default"]["outputs"]["probabilities"]["tensor_shape"]["dim"]
        assert int(dims[-1]["size"]) == len(names)
    finally:
        grpc_client.close()
    assert LocalClient(version).class_names() == names

    # the web page's backend (fer-serve serves it on the REST port) names them too
    page = f"http://127.0.0.1:{server.rest_port}/web"
    assert requests.get(f"{page}/model", timeout=30).json()["classes"] == list(names)
    photo = real_faces("test", "happy", 1)[0]
    analysed = requests.post(f"{page}/analyze?whole=1", data=photo.read_bytes(),
                             timeout=60).json()
    assert analysed["classes"] == list(names)
    [face] = analysed["faces"]
    assert list(face["probabilities"]) == list(names) and face["emotion"] in names

    # the predict CLI, through fer-serve and in-process, names the label set's classes
    assert main(["predict", str(photo), "--url", f"http://127.0.0.1:{server.rest_port}"]) == 0
    table = capsys.readouterr().out
    header = next(line for line in table.splitlines() if "emotion" in line)
    assert header.split()[-len(names):] == [n[:8] for n in names]
    assert main(["predict", str(photo), "--model-dir", str(version), "--json"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    [face] = result["faces"]
    assert list(face["probabilities"]) == list(names) and face["emotion"] in names
