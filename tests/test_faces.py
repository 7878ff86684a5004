"""Face detection and alignment on real photos (tests/data/photos, see its SOURCES.md)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from serving.faces import (
    DETECTORS,
    EYES_CENTER,
    EYES_DISTANCE,
    Face,
    alignment_matrix,
    compile_stages,
    face_crop,
    get_detector,
    iou,
    match_counts,
)

PHOTOS = Path(__file__).parent / "data" / "photos"


def truth() -> dict[str, list[tuple[int, int, int, int]]]:
    faces = json.loads((PHOTOS / "faces.json").read_text())["faces"]
    return {name: [tuple(b) for b in boxes] for name, boxes in faces.items()}


@pytest.fixture(scope="module")
def counts() -> dict[str, dict[str, int]]:
    """Found / missed / false-box counts per detector over every photo."""
    totals = {}
    for detector in DETECTORS:
        total = {"found": 0, "missed": 0, "false": 0}
        for name, boxes in truth().items():
            found = [f.box for f in get_detector(detector).detect(cv2.imread(str(PHOTOS / name)))]
            for key, value in match_counts(found, boxes).items():
                total[key] += value
        totals[detector] = total
    return totals


def test_mtcnn_finds_at_least_as_many_true_faces_as_haar_with_fewer_false_boxes(counts):
    mtcnn, haar = counts["mtcnn"], counts["haar"]
    assert mtcnn["found"] >= haar["found"]
    assert mtcnn["false"] < haar["false"]
    assert mtcnn["found"] + mtcnn["missed"] == sum(len(b) for b in truth().values())


def test_mtcnn_finds_every_face_of_the_group_photo():
    boxes = truth()["insightface_t1.jpg"]
    faces = get_detector("mtcnn").detect(cv2.imread(str(PHOTOS / "insightface_t1.jpg")))
    assert match_counts([f.box for f in faces], boxes) == {"found": 6, "missed": 0, "false": 0}
    assert [f.box[0] for f in faces] == sorted(f.box[0] for f in faces)  # left to right
    for face in faces:
        assert set(face.landmarks) == {"left_eye", "right_eye", "nose", "mouth_left",
                                       "mouth_right"}
        x, y, w, h = face.box
        for px, py in face.landmarks.values():  # landmarks inside their box
            assert x - 2 <= px <= x + w + 2 and y - 2 <= py <= y + h + 2


def test_mtcnn_as_graphs_finds_exactly_what_the_package_finds_eagerly():
    from mtcnn import MTCNN

    rgb = cv2.cvtColor(cv2.imread(str(PHOTOS / "insightface_t1.jpg")), cv2.COLOR_BGR2RGB)
    eager, compiled = MTCNN(), MTCNN()
    compile_stages(compiled)
    assert all(hasattr(stage._model, "python_function") for stage in compiled.stages)
    assert not any(hasattr(stage._model, "python_function") for stage in eager.stages)
    assert all(hasattr(stage._model, "python_function")  # what the detector runs
               for stage in get_detector("mtcnn")._mtcnn.stages)
    half = cv2.resize(rgb, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    for image in (rgb, half):  # other pyramid sizes: no retracing to a wrong shape
        want, got = eager.detect_faces(image), compiled.detect_faces(image)
        assert len(got) == len(want) > 0
        for g, w in zip(got, want):
            assert np.allclose(g["box"], w["box"], atol=1)
            assert g["confidence"] == pytest.approx(w["confidence"], abs=1e-4)
            for k in w["keypoints"]:
                assert np.allclose(g["keypoints"][k], w["keypoints"][k], atol=1)


@pytest.mark.parametrize("detector", DETECTORS)
def test_min_face_keeps_the_faces_above_it_and_skips_those_far_below(detector):
    image = cv2.imread(str(PHOTOS / "insightface_t1.jpg"))  # six faces of 93-110 px
    boxes = truth()["insightface_t1.jpg"]
    every = [f.box for f in get_detector(detector).detect(image)]
    above = get_detector(detector).detect(image, min_face=75)
    assert match_counts([f.box for f in above], boxes)["found"] == \
        match_counts(every, boxes)["found"] > 0  # found as well, boxes in place
    if detector == "mtcnn":  # landmarks in the full image's coordinates, inside the box
        for face in above:
            x, y, w, h = face.box
            assert all(x <= px <= x + w and y <= py <= y + h
                       for px, py in face.landmarks.values())
    assert get_detector(detector).detect(image, min_face=300) == []


def test_alignment_levels_the_eyes_and_frames_them_like_fer2013():
    """A real face, rotated 20 degrees: after alignment its eyes (found again by MTCNN on
    the aligned crop, enlarged) are level and where FER2013's faces have them."""
    image = cv2.imread(str(PHOTOS / "face_recognition_obama.jpg"))
    h, w = image.shape[:2]
    rotated = cv2.warpAffine(image, cv2.getRotationMatrix2D((w / 2, h / 3), 20, 1.0), (w, h),
                             borderMode=cv2.BORDER_REPLICATE)
    detector = get_detector("mtcnn")
    (face,) = [f for f in detector.detect(rotated) if f.box[2] > 80]
    left, right = face.landmarks["left_eye"], face.landmarks["right_eye"]
    assert abs(np.degrees(np.arctan2(right[1] - left[1], right[0] - left[0]))) > 12  # tilted
    crop = face_crop(rotated, face)
    assert crop.shape == (48, 48) and crop.dtype == np.uint8
    big = cv2.cvtColor(cv2.resize(crop, (192, 192), interpolation=cv2.INTER_CUBIC),
                       cv2.COLOR_GRAY2BGR)
    (again,) = detector.detect(big)
    left, right = (np.array(again.landmarks[k]) / 192 for k in ("left_eye", "right_eye"))
    assert abs(right[1] - left[1]) < 0.04  # level
    assert np.allclose((left + right) / 2, EYES_CENTER, atol=0.06)
    assert abs(np.linalg.norm(right - left) - EYES_DISTANCE) < 0.06


def test_alignment_maps_the_eyes_exactly():
    face = Face((0, 0, 100, 100), 1.0, {"left_eye": (30.0, 50.0), "right_eye": (70.0, 40.0)})
    matrix = alignment_matrix(face, 48)
    eyes = np.array([[30, 50, 1], [70, 40, 1]], float) @ matrix.T
    assert eyes[0, 1] == pytest.approx(eyes[1, 1])
    assert (eyes.mean(0) / 48) == pytest.approx(EYES_CENTER)
    assert np.linalg.norm(eyes[1] - eyes[0]) / 48 == pytest.approx(EYES_DISTANCE)
    assert alignment_matrix(Face((0, 0, 10, 10)), 48) is None  # Haar: no landmarks


def test_haar_faces_are_cropped_from_their_box():
    image = cv2.imread(str(PHOTOS / "face_recognition_obama.jpg"))
    (face,) = get_detector("haar").detect(image)
    assert face.landmarks is None
    x, y, w, h = face.box
    expected = cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)[y:y + h, x:x + w], (48, 48),
                          interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(face_crop(image, face), expected)


def test_match_counts_and_iou():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0
    assert match_counts([(0, 0, 10, 10), (50, 50, 10, 10), (1, 1, 10, 10)],
                        [(0, 0, 10, 10), (100, 100, 10, 10)]) == {"found": 1, "missed": 1,
                                                                   "false": 2}


def test_an_unknown_detector_is_named():
    with pytest.raises(ValueError, match="unknown face detector 'yunet'"):
        get_detector("yunet")


def test_a_photo_without_faces_gives_none():
    noise = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    for detector in DETECTORS:
        assert get_detector(detector).detect(np.full_like(noise, 128)) == []
