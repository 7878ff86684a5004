"""Deploy: versioning, atomicity (simulated crash mid-copy), repeat-safety, champion; local and gs://."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from components.deploy import deploy, find_champion, fingerprint


@pytest.fixture(scope="module")
def saved_models(trained_model, prepared, tmp_path_factory):
    """Two different exported SavedModels (different recorded metrics)."""
    from components.export import export

    root = tmp_path_factory.mktemp("saved")
    a = export(trained_model, prepared / "dataset", root / "a", {"macro_f1": 0.30})["path"]
    b = export(trained_model, prepared / "dataset", root / "b", {"macro_f1": 0.40})["path"]
    return a, b


def test_versions_count_up_and_repeat_is_safe(saved_models, tmp_path):
    a, b = saved_models
    base = str(tmp_path / "serving")
    first = deploy(a, base, "fer")
    assert (first["created"], first["version"]) == (True, 1)
    again = deploy(a, base, "fer")
    assert (again["created"], again["version"]) == (False, 1)
    assert "already deployed as version 1" in again["reason"]
    second = deploy(b, base, "fer")
    assert (second["created"], second["version"]) == (True, 2)
    assert sorted(p.name for p in (tmp_path / "serving" / "fer").iterdir()) == ["1", "2"]
    record = json.loads((tmp_path / "serving/fer/2/assets.extra/deploy.json").read_text())
    assert record["fingerprint"] == fingerprint(b) != fingerprint(a)
    assert (tmp_path / "serving/fer/2/saved_model.pb").is_file()


def test_champion_is_the_highest_version(saved_models, tmp_path):
    a, b = saved_models
    base = str(tmp_path / "serving")
    assert find_champion(base, "fer") is None
    deploy(a, base, "fer")
    deploy(b, base, "fer")
    champ = find_champion(base, "fer")
    assert champ["version"] == 2 and champ["macro_f1"] == 0.40


def test_existing_versions_are_respected(saved_models, tmp_path):
    (tmp_path / "serving" / "fer" / "7").mkdir(parents=True)  # e.g. deployed by hand
    (tmp_path / "serving" / "fer" / "notes").mkdir()
    assert deploy(saved_models[0], str(tmp_path / "serving"), "fer")["version"] == 8


class Crash(Exception):
    pass


def test_crash_mid_copy_leaves_no_version(saved_models, tmp_path, monkeypatch):
    base = tmp_path / "serving"
    copied = []
    real_copyfile = shutil.copyfile  # what copytree's copy2 calls for each file

    def crash_on_third_file(src, dst, **kw):
        if len(copied) == 2:
            raise Crash("power cut")
        copied.append(src)
        return real_copyfile(src, dst, **kw)

    monkeypatch.setattr(shutil, "copyfile", crash_on_third_file)
    with pytest.raises(Crash):
        deploy(saved_models[0], str(base), "fer")
    monkeypatch.undo()
    assert len(copied) == 2  # the crash really came mid-copy
    # TF Serving would see no version at all: no numeric directory, no half-written one.
    assert [p.name for p in (base / "fer").iterdir()] == []
    assert find_champion(str(base), "fer") is None
    assert deploy(saved_models[0], str(base), "fer")["version"] == 1


def test_a_killed_deploy_leaves_only_a_hidden_staging_dir(saved_models, tmp_path):
    """What a kill -9 mid-copy leaves (no except clause runs): TF Serving ignores it."""
    base = tmp_path / "serving" / "fer"
    base.mkdir(parents=True)
    shutil.copytree(saved_models[0], base / ".staging-1-deadbeef")
    assert find_champion(str(tmp_path / "serving"), "fer") is None
    assert deploy(saved_models[0], str(tmp_path / "serving"), "fer")["version"] == 1


@pytest.mark.parametrize("name", ["", "a/b", ".hidden"])
def test_bad_model_names(saved_models, tmp_path, name):
    with pytest.raises(ValueError, match="plain name"):
        deploy(saved_models[0], str(tmp_path), name)


def test_not_a_saved_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="saved_model.pb is missing"):
        deploy(tmp_path, str(tmp_path / "serving"), "fer")


def test_gcs_deploy_on_emulator(saved_models, gcs_bucket):
    a, b = saved_models
    base = f"gs://{gcs_bucket.name}/serving"
    first = deploy(a, base, "fer")
    assert first == {**first, "created": True, "version": 1,
                     "path": f"gs://{gcs_bucket.name}/serving/fer/1"}
    assert deploy(a, base, "fer")["created"] is False
    assert deploy(b, base, "fer")["version"] == 2
    champ = find_champion(base, "fer")
    assert champ["version"] == 2 and champ["macro_f1"] == 0.40
    names = {blob.name for blob in gcs_bucket.list_blobs(prefix="serving/fer/2/")}
    local = {f"serving/fer/2/{p.relative_to(b).as_posix()}" for p in Path(b).rglob("*")
             if p.is_file()}
    assert local | {"serving/fer/2/assets.extra/deploy.json"} == names


def test_gcs_upload_order_puts_saved_model_pb_last(saved_models, gcs_bucket, monkeypatch):
    from google.cloud.storage import Blob

    order = []
    real = Blob.upload_from_filename

    def record(self, filename, *args, **kw):
        order.append(self.name)
        return real(self, filename, *args, **kw)

    monkeypatch.setattr(Blob, "upload_from_filename", record)
    deploy(saved_models[0], f"gs://{gcs_bucket.name}/s", "fer")
    assert order[-1] == "s/fer/1/saved_model.pb" and len(order) > 3
