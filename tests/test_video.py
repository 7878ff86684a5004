"""``fer-pipeline predict clip.mp4``: faces tracked across a real video's frames, smoothed,
written out; bad files; the same answers over REST as in-process."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.cli import main
from serving.contract import BUNDLED_MODEL_BASE, CLASS_NAMES, PROBABILITIES
from serving.faces import Face
from serving.video import (
    NO_FACE_NOTE,
    ReadAhead,
    Tracker,
    VideoError,
    VideoOptions,
    analyse_video,
    associate,
    ema,
    min_face_for,
    open_video,
    run_videos,
)
from tests.helpers import fer_root

PHOTOS = Path(__file__).parent / "data" / "photos"
FRAMES, SIZE = 36, (640, 480)
# Face A: the licensed photo around its face (faces.json), 166x195, moving right and down;
# face B: a real FER2013 face (happy), enlarged to 160x160, moving left.
A_REGION, A_SIZE = (165, 10, 222, 260), (166, 195)
B_FILE, B_SIZE = ("happy", "PublicTest_10130075.jpg"), 160


def face_boxes(i: int) -> list[tuple[int, int, int, int]]:
    """Where faces A and B are pasted in frame ``i``."""
    return [(40 + 3 * i, 120 + i, *A_SIZE), (440 - 3 * i, 200, B_SIZE, B_SIZE)]


def background() -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE[1], 0:SIZE[0]]
    return np.dstack([90 + xx * 0.1, 140 + yy * 0.1, np.full(xx.shape, 170.0)]).astype(np.uint8)


def write_clip(path: Path, frames: int = FRAMES, with_faces: bool = True) -> Path:
    x, y, w, h = A_REGION
    face_a = cv2.resize(cv2.imread(str(PHOTOS / "face_recognition_obama.jpg"))[y:y + h, x:x + w],
                        A_SIZE, interpolation=cv2.INTER_AREA)
    face_b = cv2.resize(cv2.imread(str(fer_root() / "test" / B_FILE[0] / B_FILE[1])),
                        (B_SIZE, B_SIZE), interpolation=cv2.INTER_CUBIC)
    fourcc = cv2.VideoWriter_fourcc(*("mp4v" if path.suffix == ".mp4" else "MJPG"))
    writer = cv2.VideoWriter(str(path), fourcc, 25.0, SIZE)
    for i in range(frames):
        frame = background()
        if with_faces:
            for (bx, by, bw, bh), face in zip(face_boxes(i), (face_a, face_b)):
                frame[by:by + bh, bx:bx + bw] = face
        else:  # something that moves, but no face
            cv2.rectangle(frame, (60 + 4 * i, 100), (220 + 4 * i, 300), (200, 200, 200), -1)
        writer.write(frame)
    writer.release()
    return path


def frame_count(path: str | Path) -> int:
    capture = cv2.VideoCapture(str(path))
    n = 0
    while capture.read()[0]:
        n += 1
    return n


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clip") / "two faces.mp4")


@pytest.fixture(scope="module")
def client():
    from serving.predict import local_client

    return local_client()


def rows_by_track(rows: list[dict]) -> dict[int, list[dict]]:
    tracks: dict[int, list[dict]] = {}
    for row in rows:
        tracks.setdefault(row["track"], []).append(row)
    return tracks


def check_follows_its_face(rows: list[dict]) -> int:
    """Every row's box centre lies on one and the same pasted face; returns that face."""
    faces = set()
    for row in rows:
        b = row["box"]
        cx, cy = b["x"] + b["w"] / 2, b["y"] + b["h"] / 2
        on = [k for k, (x, y, w, h) in enumerate(face_boxes(row["frame"]))
              if x <= cx <= x + w and y <= cy <= y + h]
        assert len(on) == 1, row
        faces.add(on[0])
    assert len(faces) == 1
    return faces.pop()


# --------------------------------------------------------------------------- the CLI


def test_two_moving_faces_are_tracked_and_written_out(clip, tmp_path, capsys):
    """The default path (MTCNN, detection every 5th frame, the bundled model in-process), a
    photo beside the video in one --json call."""
    photo = PHOTOS / "face_recognition_obama.jpg"
    out = tmp_path / "out"
    assert main(["predict", str(photo), str(clip), "--output", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    photo_result, video = json.loads(captured.out)
    assert photo_result["image"] == str(photo) and photo_result["faces"]  # photos as before
    assert video["video"] == str(clip) and video["error"] is None and video["note"] is None
    assert (video["frames_read"], video["frames_analysed"]) == (FRAMES, FRAMES)
    assert video["detection_passes"] == math.ceil(FRAMES / 5)
    assert f"{FRAMES} frames read, {FRAMES} analysed, 2 tracks, " in captured.err
    assert "Traceback" not in captured.err

    stem = "two faces"
    data = json.loads((out / f"{stem}.emotions.json").read_text())
    tracks = rows_by_track(data["rows"])
    assert sorted(tracks) == [1, 2]  # one id per face, the same in every frame
    assert {check_follows_its_face(rows) for rows in tracks.values()} == {0, 1}
    for rows in tracks.values():
        assert [r["frame"] for r in rows] == list(range(FRAMES))  # a row per frame per track
        assert [r["detected"] for r in rows] == [f % 5 == 0 for f in range(FRAMES)]
        for r in rows:
            assert sum(r[PROBABILITIES].values()) == pytest.approx(1.0, abs=2e-3)
            assert r["smoothed_emotion"] == max(r["smoothed"], key=r["smoothed"].get)
        # smoothing: the first row is the raw answer, later ones are averaged with the past
        assert rows[0]["smoothed"] == rows[0][PROBABILITIES]
        assert rows[1]["smoothed"]["happy"] == pytest.approx(
            0.7 * rows[0][PROBABILITIES]["happy"] + 0.3 * rows[1][PROBABILITIES]["happy"],
            abs=2e-4)
    by_face = {check_follows_its_face(rows): rows for rows in tracks.values()}
    assert by_face[1][-1]["smoothed_emotion"] == "happy"  # the FER2013 face labelled happy

    with (out / f"{stem}.emotions.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(data["rows"]) == 2 * FRAMES
    assert [(int(r["frame"]), int(r["track"])) for r in table] == [
        (r["frame"], r["track"]) for r in data["rows"]]
    assert set(CLASS_NAMES) <= set(table[0]) and "smoothed_neutral" in table[0]

    assert frame_count(out / f"{stem}.annotated.mp4") == FRAMES
    annotated = cv2.VideoCapture(str(out / f"{stem}.annotated.mp4")).read()[1]
    assert annotated.shape == (SIZE[1], SIZE[0], 3)
    for summary in video["tracks"]:
        png = cv2.imread(summary["timeline"])
        assert png is not None and png.shape[1] > 400
        assert Path(summary["timeline"]).name == f"{stem}.track{summary['track']}.timeline.png"


def test_bad_files_are_short_messages_and_a_failed_exit(tmp_path, capsys):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all\n" * 20)
    jpeg = tmp_path / "photo.mp4"
    jpeg.write_bytes((PHOTOS / "face_recognition_obama.jpg").read_bytes())
    empty = tmp_path / "empty.mov"
    empty.touch()
    no_frames = tmp_path / "no frames.avi"
    cv2.VideoWriter(str(no_frames), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, SIZE).release()
    missing = tmp_path / "missing.mkv"
    expected = {text: f"not a readable video: {text}",
                jpeg: f"a JPEG image, not a video: {jpeg}",
                empty: f"empty file: {empty}",
                no_frames: f"no frames in video: {no_frames}",
                missing: f"no such file: {missing}"}
    for path, message in expected.items():
        assert main(["predict", str(path), "--output", str(tmp_path / "out")]) == 1
        captured = capsys.readouterr()
        assert captured.out.strip() == f"{path}: {message}"
        assert "Traceback" not in captured.err
    assert main(["predict", str(text), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)[0]["error"] == expected[text]
    assert not (tmp_path / "out").exists()
    assert main(["predict", str(text), "--stride", "0"]) == 2
    assert "error: --stride and --detect-every must be at least 1" in capsys.readouterr().err
    assert main(["predict", str(text), "--smoothing", "1"]) == 2
    assert "error: --smoothing must be in [0, 1)" in capsys.readouterr().err


def test_over_rest_the_answers_are_the_in_process_ones(clip, client, tmp_path, serve,
                                                       capsys):
    server = serve(BUNDLED_MODEL_BASE)
    assert main(["predict", str(clip), "--url", f"http://127.0.0.1:{server.rest_port}",
                 "--detector", "haar", "--stride", "2", "--output", str(tmp_path / "rest")]
                ) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith(f"{clip}: {FRAMES} frames read, {FRAMES // 2} "
                                           "analysed, 2 tracks, ")
    assert "  #1 " in out and "  #2 " in out
    by_rest = json.loads((tmp_path / "rest" / "two faces.emotions.json").read_text())["rows"]
    local = analyse_video(clip, client, VideoOptions(stride=2, detector="haar"))
    assert len(by_rest) == len(local.rows) == FRAMES
    for rest, mine in zip(by_rest, local.rows):
        assert (rest["frame"], rest["track"]) == (mine.frame, mine.track)
        assert tuple(rest["box"].values()) == mine.box
        assert list(rest[PROBABILITIES].values()) == pytest.approx(
            list(mine.probabilities), abs=1e-3)


# --------------------------------------------------------------------------- the functions


def test_stride_and_detect_every_set_what_is_analysed(clip, client, tmp_path):
    result = analyse_video(clip, client, VideoOptions(stride=3, detect_every=1,
                                                      detector="haar"), tmp_path)
    assert (result.frames_read, result.frames_analysed, result.detections) == (FRAMES, 12, 12)
    assert len(result.tracks) == 2
    for track in result.tracks:
        assert [r.frame for r in track.rows] == list(range(0, FRAMES, 3))
        assert all(r.detected for r in track.rows)
        check_follows_its_face([r.as_dict() for r in track.rows])
    # every frame is still in the annotated video, with the last analysed frame's boxes
    assert frame_count(tmp_path / "two faces.annotated.mp4") == FRAMES
    timing = result.timing()
    assert timing["frames_per_s"] > 0 and timing["classification_ms_per_frame"] > 0

    sparse = analyse_video(clip, client, VideoOptions(stride=3, detect_every=4,
                                                      detector="haar"))
    assert (sparse.frames_analysed, sparse.detections) == (12, 3)
    assert [r.detected for r in sparse.tracks[0].rows] == [k % 4 == 0 for k in range(12)]


def test_the_smallest_face_looked_for_follows_the_frame_size_unless_set(clip, client):
    assert (min_face_for(640, 480), min_face_for(320, 240), min_face_for(1920, 1080)) == (
        40, 20, 90)
    result = analyse_video(clip, client, VideoOptions(stride=6, detect_every=1))  # MTCNN
    assert result.options.min_face == 40 and result.as_dict()["settings"]["min_face"] == 40
    assert len(result.tracks) == 2  # both faces (160 px and more) are well above 40 px
    too_large = analyse_video(clip, client, VideoOptions(stride=6, detect_every=1,
                                                         min_face=400))
    assert too_large.detections == 6 and too_large.tracks == []
    assert too_large.note == NO_FACE_NOTE
    with pytest.raises(ValueError, match="--min-face"):
        VideoOptions(min_face=-1).check()


def test_a_video_without_faces_says_so(client, tmp_path):
    path = write_clip(tmp_path / "wall.avi", frames=12, with_faces=False)
    text, code, (summary,) = run_videos([str(path)], client, VideoOptions(detector="haar"),
                                        str(tmp_path / "out"))
    assert code == 0
    assert f"{path}: 640x480, 25.0 frames/s, {NO_FACE_NOTE} in 12 analysed frames" in text
    assert text.splitlines()[-1].startswith(f"{path}: 12 frames read, 12 analysed, 0 tracks")
    assert summary["note"] == NO_FACE_NOTE and summary["tracks"] == []
    data = json.loads((tmp_path / "out" / "wall.emotions.json").read_text())
    assert data["note"] == NO_FACE_NOTE and data["rows"] == []
    assert (tmp_path / "out" / "wall.emotions.csv").read_text().count("\n") == 1  # header
    assert not list((tmp_path / "out").glob("*.png"))
    assert frame_count(tmp_path / "out" / "wall.annotated.mp4") == 12


def test_association_is_greedy_by_overlap():
    tracks = [(0, 0, 100, 100), (200, 0, 100, 100)]
    found = [(210, 5, 100, 100), (5, 5, 100, 100), (500, 500, 50, 50)]
    assert associate(tracks, found) == [(0, 1), (1, 0)]
    assert associate(tracks, []) == [] and associate([], found) == []
    # one found box overlapping two tracks goes to the one it overlaps most
    assert associate([(0, 0, 100, 100), (30, 0, 100, 100)], [(25, 0, 100, 100)]) == [(1, 0)]


def test_moving_average():
    assert ema(np.array([1.0, 0.0]), np.array([0.0, 1.0]), 0.75).tolist() == [0.75, 0.25]
    assert ema(np.array([1.0, 0.0]), np.array([0.0, 1.0]), 0.0).tolist() == [0.0, 1.0]


def test_tracks_keep_their_ids_follow_faces_and_end_after_missed_detections():
    """A real face moving over a plain frame: followed between detections by its template,
    ended after ``max_missed`` detection passes without it; a new face gets the next id."""
    x, y, w, h = A_REGION
    face = cv2.cvtColor(cv2.imread(str(PHOTOS / "face_recognition_obama.jpg"))[y:y + h, x:x + w],
                        cv2.COLOR_BGR2GRAY)

    def frame(at: tuple[int, int] | None) -> np.ndarray:
        gray = np.full((480, 640), 120, np.uint8)
        if at:
            gray[at[1]:at[1] + h, at[0]:at[0] + w] = face
        return gray

    tracker = Tracker(max_missed=2)
    (seen,) = tracker.detected(frame((50, 40)), [Face((50, 40, w, h), 0.99,
                                                      {"left_eye": (100.0, 120.0)})])
    assert seen[0].id == 1 and seen[2] is True
    for step in range(1, 4):  # followed, 7 px a frame, landmarks too (a face this large
        # is matched at half size: to a pixel or two)
        (seen,) = tracker.follow(frame((50 + 7 * step, 40 + 2 * step)))
        x1, y1, w1, h1 = seen[1].box
        assert (w1, h1) == (w, h) and seen[2] is False
        assert abs(x1 - 50 - 7 * step) <= 2 and abs(y1 - 40 - 2 * step) <= 2
        assert seen[1].landmarks["left_eye"] == (100.0 + x1 - 50, 120.0 + y1 - 40)
    # the detector misses it once: it is followed still
    (seen,) = tracker.detected(frame((78, 48)), [])
    assert seen[0].id == 1 and tracker.live[0].misses == 1
    assert abs(seen[1].box[0] - 78) <= 2 and abs(seen[1].box[1] - 48) <= 2
    # it leaves: not found by following, ended after two more passes without it
    assert tracker.follow(frame(None)) == []
    assert tracker.detected(frame(None), []) == [] and tracker.live
    assert tracker.detected(frame(None), []) == [] and not tracker.live
    # a new face is a new track, with the next id
    (seen,) = tracker.detected(frame((300, 100)), [Face((300, 100, w, h))])
    assert seen[0].id == 2 and [t.id for t in tracker.tracks] == [1, 2]


def test_a_box_found_by_one_detection_pass_only_is_not_reported():
    """A false box (one pass found it, the next ones did not) is dropped at the end, and the
    tracks left are numbered from 1; a box inside a face seen in the same pass is no face."""
    gray = np.full((480, 640), 120, np.uint8)
    tracker = Tracker(max_missed=1)
    face, false = Face((300, 100, 100, 100)), Face((20, 20, 40, 40))
    assert [s[0].id for s in tracker.detected(gray, [face, false])] == [1, 2]
    tracker.detected(gray, [face, Face((320, 150, 40, 40))])  # inside the face: no new track
    tracker.detected(gray, [face])
    late = tracker.detected(gray, [face, Face((500, 300, 60, 60))])  # in the last pass only
    assert [s[0].id for s in late] == [1, 3]
    kept = tracker.finish()
    assert [(t.id, t.face.box, t.hits) for t in kept] == [(1, face.box, 4),
                                                         (2, (500, 300, 60, 60), 1)]


def test_the_read_ahead_thread_keeps_order_passes_errors_on_and_stops_when_closed():
    assert [x for x in iter(ReadAhead(iter(range(50)), depth=4).next, None)] == list(range(50))

    def failing():
        yield 1
        raise VideoError("frame 2 is broken")

    ahead = ReadAhead(failing(), depth=2)
    assert ahead.next() == 1
    with pytest.raises(VideoError, match="frame 2 is broken"):
        ahead.next()
    assert ahead.next() is None
    ahead.close()

    closed = []

    def endless():
        try:
            n = 0
            while True:
                n += 1
                yield n
        finally:
            closed.append(True)  # a video capture is released here

    ahead = ReadAhead(endless(), depth=3)  # the thread fills the queue and waits
    assert ahead.next() == 1
    ahead.close()
    assert closed == [True] and not ahead._thread.is_alive()


def test_open_video_reads_size_rate_and_count(clip):
    capture, info = open_video(clip)
    capture.release()
    assert (info.width, info.height, info.fps, info.frames) == (*SIZE, 25.0, FRAMES)
