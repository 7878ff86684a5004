import pytest

from components.labels import class_id_from_name
from serving.contract import CLASS_NAMES, NUM_CLASSES


def test_fer2013_ids_in_order():
    assert CLASS_NAMES == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    assert NUM_CLASSES == 7


@pytest.mark.parametrize("name, expected", [
    ("angry", 0), ("Anger", 0), ("ANGRY ", 0),
    ("disgust", 1), ("Disgusted", 1),
    ("fear", 2), ("fearful", 2),
    ("happy", 3), ("Happiness", 3),
    ("sad", 4), ("sadness", 4),
    ("surprise", 5), ("Surprised", 5),
    ("neutral", 6), ("NEUTRAL", 6),
    ("0", 0), ("6", 6),
])
def test_folder_names_map_by_name(name, expected):
    assert class_id_from_name(name) == expected


@pytest.mark.parametrize("name", ["contempt", "7", "happyy", "", "train"])
def test_unknown_names(name):
    assert class_id_from_name(name) is None


def test_not_alphabetical():
    # Alphabetical folder order would give angry=0, disgust=1, fear=2, happy=3, neutral=4, ...
    assert class_id_from_name("neutral") == 6
    assert class_id_from_name("sad") == 4
    assert class_id_from_name("surprise") == 5
