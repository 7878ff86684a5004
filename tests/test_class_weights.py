import json

import numpy as np
import pytest

from components.class_weights import class_weights, load_class_weights
from components.dataset import TEST, TRAIN, VAL, DataError, FaceDataset


def dataset(counts_train, tmp_path, extra_test=7):
    labels = np.concatenate([np.repeat(np.arange(7), counts_train), np.arange(extra_test) % 7])
    splits = np.array([TRAIN] * int(sum(counts_train)) + [TEST] * extra_test)
    n = len(labels)
    ds = FaceDataset(np.zeros((n, 48, 48), np.uint8), labels, splits,
                     np.array([str(i) for i in range(n)]))
    ds.save(tmp_path)
    return tmp_path


def test_balanced_weights_from_train_only(tmp_path):
    counts = [10, 2, 10, 40, 20, 8, 10]
    path = dataset(counts, tmp_path / "d", extra_test=70)  # test items must not count
    weights = class_weights(path, tmp_path / "w.json")
    n = sum(counts)
    for cls, c in enumerate(counts):
        assert weights[cls] == pytest.approx(n / (7 * c), rel=1e-5)
    assert weights[1] > weights[0] > weights[3]
    on_disk = json.loads((tmp_path / "w.json").read_text())
    assert list(on_disk) == [str(i) for i in range(7)]  # keyed by class id
    assert load_class_weights(tmp_path / "w.json") == weights


def test_fer2013_proportions_match_the_seeds(tmp_path):
    # FER2013 Training counts (../shared/fer2013/README.md): disgust ~9.4, happy ~0.57.
    counts = [3995, 436, 4097, 7215, 4830, 3171, 4965]
    weights = class_weights(dataset(counts, tmp_path / "d"), tmp_path / "w.json")
    assert weights[1] == pytest.approx(9.41, abs=0.01)
    assert weights[3] == pytest.approx(0.568, abs=0.001)


def test_none_mode(tmp_path):
    weights = class_weights(dataset([5, 1, 5, 9, 5, 5, 5], tmp_path / "d"), tmp_path / "w.json",
                            "none")
    assert weights == {i: 1.0 for i in range(7)}


def test_missing_class_in_train_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no training example for disgust"):
        class_weights(dataset([5, 0, 5, 5, 5, 5, 5], tmp_path / "d"), tmp_path / "w.json")


def test_unknown_mode(tmp_path):
    with pytest.raises(ValueError, match="balanced"):
        class_weights(tmp_path, tmp_path / "w.json", "inverse")


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('[1, 2]', "JSON object"),
    ('{"0": 1.0}', "class ids 0-6"),
])
def test_load_rejects_bad_artifacts(tmp_path, content, message):
    (tmp_path / "w.json").write_text(content)
    with pytest.raises(DataError, match=message):
        load_class_weights(tmp_path / "w.json", num_classes=7)


def test_val_split_does_not_count(tmp_path):
    labels = np.concatenate([np.arange(7), np.zeros(50, int)])
    splits = np.array([TRAIN] * 7 + [VAL] * 50)
    ds = FaceDataset(np.zeros((57, 48, 48), np.uint8), labels, splits, np.arange(57).astype(str))
    ds.save(tmp_path / "d")
    assert class_weights(tmp_path / "d", tmp_path / "w.json") == {i: 1.0 for i in range(7)}
