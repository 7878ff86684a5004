"""``fer-pipeline predict`` on real FER2013 faces and on a photo with several faces."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from components.deploy import deploy
from pipeline.cli import main
from serving.contract import CLASS_NAMES
from serving.faces import DETECTORS, get_detector
from tests.helpers import deploy_and_serve, real_faces

# Faces that OpenCV's frontal-face cascade finds once enlarged (checked on ../shared/fer2013).
PHOTO_FACES = [("happy", "PublicTest_10130075.jpg"), ("surprise", "PublicTest_10709121.jpg"),
               ("angry", "PublicTest_10116449.jpg")]


@pytest.fixture(scope="module")
def server(exported_model, tmp_path_factory, serve_module):
    """One server for the module: every test here only reads from it."""
    return deploy_and_serve(exported_model, tmp_path_factory.mktemp("predict"), serve_module)


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


@pytest.mark.parametrize("detector", DETECTORS)
def test_detects_every_face_in_a_group_photo(group_photo, detector):
    boxes = [f.box for f in get_detector(detector).detect(cv2.imread(str(group_photo)))]
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


README_FACE = "PublicTest_10130075.jpg"  # the README's example: a 48x48 FER2013 face crop


def test_the_readmes_face_crop_is_happy_with_the_shipped_model(capsys):
    from tests.helpers import fer_root

    face = fer_root() / "test" / "happy" / README_FACE
    assert main(["predict", str(face)]) == 0  # once: "no face found (use --no-detect ...)"
    out = capsys.readouterr().out
    assert f"{face}: 1 face (classified as a face crop (the whole image))" in out
    (row,) = [line for line in out.splitlines() if line.strip().startswith("(0, 0, 48, 48)")]
    assert row.split()[4] == "happy"


def test_a_folder_is_classified_whole_with_a_summary(capsys):
    from tests.helpers import fer_root

    folder = fer_root() / "test" / "disgust"
    n = len(list(folder.glob("*.jpg")))
    assert main(["predict", str(folder), "--json"]) == 0  # once: "no such file"
    results = json.loads(capsys.readouterr().out)
    assert len(results) == n and all(len(r["faces"]) == 1 and r["error"] is None
                                     for r in results)
    disgust = sum(r["faces"][0]["emotion"] == "disgust" for r in results)
    assert disgust / n > 0.35  # the shipped model says disgust for 25 of these 56 faces
    assert main(["predict", str(folder)]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith(f"{n} images, {n} faces: ") and f"disgust {disgust}" in last


def test_folders_recurse_globs_expand_and_non_images_are_skipped(server, tmp_path, capsys):
    faces = real_faces("test", "sad", 3)
    (tmp_path / "a" / "b").mkdir(parents=True)
    for k, face in enumerate(faces):
        (tmp_path / ("a" if k < 2 else "a/b") / f"f{k}.jpg").write_bytes(face.read_bytes())
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    url = f"http://127.0.0.1:{server.rest_port}"
    assert main(["predict", str(tmp_path / "a"), "--url", url, "--json"]) == 0
    assert [r["image"] for r in json.loads(capsys.readouterr().out)] == [
        str(tmp_path / "a" / "b" / "f2.jpg"), str(tmp_path / "a" / "f0.jpg"),
        str(tmp_path / "a" / "f1.jpg")]
    assert main(["predict", str(tmp_path / "a" / "*.jpg"), "--url", url, "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
    assert main(["predict", str(tmp_path / "nothing*.png"), str(tmp_path / "a" / "b"),
                 "--url", url]) == 1
    out = capsys.readouterr().out
    assert "nothing*.png: no image file matches this pattern" in out
    assert "f2.jpg: 1 face (classified as a face crop" in out


def test_more_faces_than_the_servers_batch_limit_go_in_several_requests(exported_model,
                                                                        tmp_path, serve,
                                                                        capsys):
    deploy(exported_model, str(tmp_path / "serving"), "fer")
    small = serve(tmp_path / "serving" / "fer", max_batch_size=4)
    files = [str(f) for f in real_faces("test", "fear", 10)]
    from serving.client import RestClient
    from serving.predict import predict_paths

    results = predict_paths(files, RestClient(f"http://127.0.0.1:{small.rest_port}"), batch=4)
    assert [len(r.probabilities) for r in results] == [1] * 10


def test_help_and_a_rest_predict_never_import_tensorflow(server):
    """Neither the help texts nor a REST predict of face crops or of a photo through the Haar
    detector load TensorFlow (MTCNN, the default detector, does: it is a TensorFlow model)."""
    import subprocess
    import sys

    face = str(real_faces("test", "happy", 1)[0])
    photo = str(Path(__file__).parent / "data" / "photos" / "face_recognition_obama.jpg")
    script = f"""
import contextlib, io, sys
from pipeline.cli import main
for argv in ([], ["run"], ["compile"], ["submit"], ["predict"], ["deploy"], ["release"], ["data"]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        main([*argv, "--help"])
code = main(["predict", {face!r}, "--url", "http://127.0.0.1:{server.rest_port}"])
code += main(["predict", {photo!r}, "--url", "http://127.0.0.1:{server.rest_port}",
              "--detector", "haar"])
heavy = sorted(m for m in ("tensorflow", "keras", "kfp", "sklearn", "pandas") if m in sys.modules)
print("code", code, "heavy", heavy)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "code 0 heavy []", proc.stdout


def test_explain_writes_a_grad_cam_overlay_per_face_over_rest_and_grpc(server, tmp_path,
                                                                        capsys):
    files = [str(f) for f in real_faces("test", "surprise", 2)]
    url = f"http://127.0.0.1:{server.rest_port}"
    assert main(["predict", *files, "--url", url, "--explain", str(tmp_path / "x"),
                 "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    written = [face["explanation"] for r in results for face in r["faces"]]
    assert len(written) == 2
    for path, r in zip(written, results):
        assert path.endswith(f".face0.{r['faces'][0]['emotion']}.explain.png")
        overlay = cv2.imread(path)
        assert overlay.shape == (192, 384, 3)  # the face and its heatmap, 4x
        face = overlay[:, :192]
        assert np.allclose(face[..., 0], face[..., 2], atol=2)  # the face itself is gray
        assert not np.allclose(overlay[:, 192:, 0], overlay[:, 192:, 2], atol=2)  # colour
    assert main(["predict", *files, "--grpc", f"127.0.0.1:{server.grpc_port}",
                 "--explain", str(tmp_path / "g")]) == 0
    assert capsys.readouterr().out.rstrip().endswith(f"2 explanations written to {tmp_path / 'g'}")
    by_grpc = sorted(p.name for p in (tmp_path / "g").iterdir())
    assert by_grpc == sorted(Path(p).name for p in written)
