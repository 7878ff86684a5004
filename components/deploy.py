"""Deploy: publish a SavedModel to ``<serving_base>/<model_name>/<version>/`` for TF Serving.

* ``version`` = highest existing version + 1 (TF Serving serves the highest by default);
* local: the version is written under a hidden staging directory and appears in one
  ``rename``, so TF Serving never sees it half-written (it ignores non-numeric names);
* ``gs://``: objects have no atomic rename, so files are uploaded with ``saved_model.pb``
  last: until it exists the version is not loadable, and TF Serving retries a failed load;
* repeat-safe: the content fingerprint of the SavedModel is stored with each version
  (``assets.extra/deploy.json``); deploying the same model again returns that version.

The evaluation metrics exported with the model (``assets.extra/metrics.json``) let the next
run find the champion: the highest version.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from google.api_core.exceptions import NotFound

from serving.contract import ASSETS_EXTRA, METRICS_FILE
from serving.storage import gcs_client, is_gcs_uri, split_gcs_uri

DEPLOY_RECORD = f"{ASSETS_EXTRA}/deploy.json"
METRICS_RECORD = f"{ASSETS_EXTRA}/{METRICS_FILE}"
LAST_FILE = "saved_model.pb"


def fingerprint(saved_model_dir: str | Path) -> str:
    """sha256 over every file's relative path and bytes (the deploy record excluded)."""
    root = Path(saved_model_dir)
    if not (root / LAST_FILE).is_file():
        raise FileNotFoundError(f"no SavedModel at {root}: {LAST_FILE} is missing")
    digest = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = f.relative_to(root).as_posix()
        if rel == DEPLOY_RECORD:
            continue
        digest.update(rel.encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


class _Local:
    def __init__(self, model_base: str):
        self.base = Path(model_base)

    def versions(self) -> list[int]:
        if not self.base.is_dir():
            return []
        return sorted(int(p.name) for p in self.base.iterdir()
                      if p.is_dir() and p.name.isdigit() and int(p.name) > 0)

    def read_text(self, version: int, rel: str) -> str | None:
        path = self.base / str(version) / rel
        return path.read_text() if path.is_file() else None

    def fetch(self, version: int, dest: Path) -> Path:
        return self.base / str(version)  # already on this machine

    def publish(self, source: Path, version: int, record: dict[str, Any]) -> str:
        self.base.mkdir(parents=True, exist_ok=True)
        staging = self.base / f".staging-{version}-{uuid.uuid4().hex[:8]}"
        try:
            shutil.copytree(source, staging)
            (staging / DEPLOY_RECORD).parent.mkdir(exist_ok=True)
            (staging / DEPLOY_RECORD).write_text(json.dumps(record, indent=2) + "\n")
            target = self.base / str(version)
            os.rename(staging, target)  # atomic; fails if another deployer took the version
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return str(target)


class _GCS:
    def __init__(self, model_base: str):
        bucket, prefix = split_gcs_uri(model_base.rstrip("/"))
        self.bucket = gcs_client().bucket(bucket)
        self.prefix = prefix + "/" if prefix else ""
        self.uri = f"gs://{bucket}/{self.prefix}"

    def versions(self) -> list[int]:
        names = (b.name[len(self.prefix):] for b in self.bucket.list_blobs(prefix=self.prefix))
        tops = {n.split("/", 1)[0] for n in names if n.endswith("/" + LAST_FILE)}
        return sorted(int(t) for t in tops if t.isdigit() and int(t) > 0)

    def read_text(self, version: int, rel: str) -> str | None:
        try:
            return self.bucket.blob(f"{self.prefix}{version}/{rel}").download_as_text()
        except NotFound:
            return None

    def fetch(self, version: int, dest: Path) -> Path:
        prefix = f"{self.prefix}{version}/"
        for blob in self.bucket.list_blobs(prefix=prefix):
            if blob.name.endswith("/"):
                continue
            path = dest / blob.name[len(prefix):]
            path.parent.mkdir(parents=True, exist_ok=True)
            blob.download_to_filename(str(path))
        return dest

    def publish(self, source: Path, version: int, record: dict[str, Any]) -> str:
        if self.bucket.blob(f"{self.prefix}{version}/{LAST_FILE}").exists():
            raise FileExistsError(f"{self.uri}{version} already exists")
        files = sorted((p for p in source.rglob("*") if p.is_file()),
                       key=lambda p: (p.name == LAST_FILE, p.as_posix()))
        dest = f"{self.prefix}{version}/"
        self.bucket.blob(dest + DEPLOY_RECORD).upload_from_string(
            json.dumps(record, indent=2) + "\n", content_type="application/json")
        for f in files:  # saved_model.pb last: the version is loadable only once complete
            self.bucket.blob(dest + f.relative_to(source).as_posix()).upload_from_filename(str(f))
        return f"{self.uri}{version}"


def _target(serving_base: str, model_name: str) -> _Local | _GCS:
    if not model_name or "/" in model_name or model_name.startswith("."):
        raise ValueError(f"model_name must be a plain name, got {model_name!r}")
    if is_gcs_uri(serving_base):
        return _GCS(f"{serving_base.rstrip('/')}/{model_name}")
    return _Local(str(PurePosixPath(serving_base) / model_name))


def find_champion(serving_base: str, model_name: str) -> dict[str, Any] | None:
    """The deployed champion (the highest version) and its recorded macro F1, or ``None``."""
    target = _target(serving_base, model_name)
    versions = target.versions()
    if not versions:
        return None
    version = versions[-1]
    raw = target.read_text(version, METRICS_RECORD)
    metrics = json.loads(raw) if raw else {}
    return {"version": version, "macro_f1": float(metrics.get("macro_f1", 0.0)),
            "metrics": metrics}


def fetch_version(serving_base: str, model_name: str, version: int, dest: str | Path) -> Path:
    """A local directory holding deployed ``version`` of ``model_name``: the version itself
    on a local serving base, a copy downloaded into ``dest`` from a ``gs://`` one."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    path = _target(serving_base, model_name).fetch(version, dest)
    if not (path / "saved_model.pb").is_file():
        raise FileNotFoundError(f"version {version} of {model_name!r} under {serving_base} has "
                                f"no saved_model.pb")
    return path


def deploy(saved_model_dir: str | Path, serving_base: str, model_name: str,
           max_attempts: int = 5) -> dict[str, Any]:
    """Publish the SavedModel as the next version; a model already deployed is not repeated."""
    source = Path(saved_model_dir)
    digest = fingerprint(source)
    target = _target(serving_base, model_name)
    for _ in range(max_attempts):
        versions = target.versions()
        for v in versions:
            raw = target.read_text(v, DEPLOY_RECORD)
            if raw and json.loads(raw).get("fingerprint") == digest:
                return {"created": False, "version": v, "path": _path(target, v),
                        "fingerprint": digest,
                        "reason": f"this model is already deployed as version {v}"}
        version = (versions[-1] if versions else 0) + 1
        record = {"fingerprint": digest, "version": version, "model_name": model_name,
                  "deployed_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        try:
            path = target.publish(source, version, record)
        except OSError:
            if version in target.versions():
                continue  # another deployer took this version: try the next one
            raise
        return {"created": True, "version": version, "path": path, "fingerprint": digest,
                "reason": f"deployed as version {version}"}
    raise RuntimeError(f"could not claim a new version under {serving_base}/{model_name} "
                       f"after {max_attempts} attempts")


def _path(target: _Local | _GCS, version: int) -> str:
    return f"{target.uri}{version}" if isinstance(target, _GCS) else str(target.base / str(version))
