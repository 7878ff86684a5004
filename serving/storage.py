"""Where models and data live: Google Cloud Storage access shared by the steps that read or
write ``gs://`` URIs, and the numbered versions of a local model base.

Credentials follow Google's Application Default Credentials. When
``STORAGE_EMULATOR_HOST`` is set (a local GCS emulator), the client talks to the
emulator with anonymous credentials instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # google-cloud-storage loads in gcs_client: most commands never need it
    from google.cloud import storage


def is_gcs_uri(uri: str) -> bool:
    """Whether ``uri`` names Cloud Storage (``gs://...``)."""
    return uri.startswith("gs://")


def split_gcs_uri(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> ``("bucket", "a/b")``."""
    if not is_gcs_uri(uri):
        raise ValueError(f"not a gs:// URI: {uri!r}")
    bucket, _, prefix = uri[len("gs://"):].partition("/")
    if not bucket:
        raise ValueError(f"gs:// URI without a bucket: {uri!r}")
    return bucket, prefix


def gcs_client() -> storage.Client:
    """A Cloud Storage client with Application Default Credentials, or with anonymous ones when
    ``STORAGE_EMULATOR_HOST`` names an emulator."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        return storage.Client(
            credentials=AnonymousCredentials(),
            project=os.environ.get("GOOGLE_CLOUD_PROJECT", "emulator"),
        )
    return storage.Client()


def local_versions(base: str | Path) -> list[int]:
    """The SavedModel versions under a local model base, ascending (none if it is missing)."""
    base = Path(base)
    if not base.is_dir():
        return []
    return sorted(int(p.name) for p in base.iterdir()
                  if p.name.isdigit() and int(p.name) > 0 and (p / "saved_model.pb").is_file())
