"""``fer-pipeline predict`` on real FER2013 faces and on a photo with several faces."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from components.deploy import deploy
from pipeline.cli import main
from serving.contract import CLASS_NAMES
from serving.predict import detect_faces
from tests.helpers import real_faces

# Faces that OpenCV's frontal-face cascade finds once enlarged (checked on ../shared/fer2013).
PHOTO_FACES = [("happy", "PublicTest_10130075.jpg"), ("surprise", "PublicTest_10709121.jpg"),
               ("angry", "PublicTest_10116449.jpg")]


@pytest.fixture
def server(exported_model, tmp_path, serve):
    deploy(exported_model, str(tmp_path / "serving"), "fer")
    return serve(tmp_path / "serving" / "fer")


@pytest.fixture
def group_photo(tmp_path):
    """A 900x320 colour 'photo' with three real FER2013 faces, enlarged, side by side."""
    from tests.helpers import fer_root

    canvas = np.full((320, 900, 3), (90, 140, 170), np.uint8)
    for k, (cls, name) in enumerate(PHOTO_FACES):
        face = cv2.imread(str(fer_root() / "test" / cls / name))
        canvas[60:260, 50 + 300 * k: 250 + 300 * k] = cv2.resize(face, (200, 200),
                                                                 interpolation=cv2.INTER_CUBIC)
    path = tmp_path / "group.jpg"
    cv2.imwrite(str(path), canvas)
    return path


def test_detects_every_face_in_a_group_photo(group_photo):
    boxes = detect_faces(cv2.imread(str(group_photo)))
    assert len(boxes) == 3
    for k, (x, y, w, h) in enumerate(boxes):  # left to right, each inside its face
        cx, cy = x + w / 2, y + h / 2
        assert 50 + 300 * k < cx < 250 + 300 * k and 60 < cy < 260


def test_predict_group_photo_rest_json_and_annotated(server, group_photo, tmp_path, capsys):
    code = main(["predict", str(group_photo), "--url", f"http://127.0.0.1:{server.rest_port}",
                 "--json", "--annotate", str(tmp_path / "out")])
    assert code == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["error"] is None and len(result["faces"]) == 3
    for face in result["faces"]:
        assert face["emotion"] in CLASS_NAMES
        assert sum(face["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
        assert face["confidence"] == max(face["probabilities"].values())
    annotated = cv2.imread(str(tmp_path / "out" / "group.annotated.png"))
    assert annotated.shape == (320, 900, 3)
    assert not np.array_equal(annotated, cv2.imread(str(group_photo)))  # boxes were drawn


def test_predict_face_crops_over_grpc_table(server, capsys):
    files = [str(f) for f in real_faces("test", "neutral", 2)]
    code = main(["predict", *files, "--grpc", f"127.0.0.1:{server.grpc_port}", "--no-detect"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.count(": 1 face") == 2
    assert "angry  disgust     fear    happy      sad surprise  neutral" in out
    rows = [line for line in out.splitlines() if line.strip().startswith("(0, 0, 48, 48)")]
    assert len(rows) == 2
    for row in rows:
        probs = [float(v) for v in row.split()[-7:]]
        assert sum(probs) == pytest.approx(1.0, abs=0.01)


def test_rest_and_grpc_give_the_same_answer(server, capsys):
    files = [str(f) for f in real_faces("test", "sad", 3)]
    main(["predict", *files, "--no-detect", "--json", "--url",
          f"http://127.0.0.1:{server.rest_port}"])
    by_rest = json.loads(capsys.readouterr().out)
    main(["predict", *files, "--no-detect", "--json", "--grpc", f"127.0.0.1:{server.grpc_port}"])
    assert json.loads(capsys.readouterr().out) == by_rest


def test_no_face_and_unreadable_files_are_clear_messages(server, tmp_path, capsys):
    blank = tmp_path / "wall.png"
    cv2.imwrite(str(blank), np.full((200, 300, 3), 200, np.uint8))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    code = main(["predict", str(blank), str(broken), str(tmp_path / "missing.jpg"),
                 "--url", f"http://127.0.0.1:{server.rest_port}"])
    out = capsys.readouterr().out
    assert code == 1  # some images failed, the others were still answered
    assert f"{blank}: no face found (use --no-detect" in out
    assert f"{broken}: not a readable image" in out
    assert "missing.jpg: no such file" in out


def test_unreachable_server_is_a_clear_error(tmp_path, capsys):
    face = str(real_faces("test", "happy", 1)[0])
    assert main(["predict", face, "--no-detect", "--url", "http://127.0.0.1:9", "--timeout", "2"]) == 1
    assert "error: cannot reach http://127.0.0.1:9" in capsys.readouterr().err
