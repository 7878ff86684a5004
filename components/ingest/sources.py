"""Where the raw data lives: a local directory or file, a ``.zip``, or ``gs://bucket/prefix``.

Every source exposes the same two operations: the list of its entries (POSIX paths
relative to the source root, sorted) and reading one entry's bytes.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

from components.dataset import DataError
from serving.storage import gcs_client, is_gcs_uri, split_gcs_uri

_READ_THREADS = 16  # reads are I/O bound (disk or network); decoding happens elsewhere


class Source:
    """A read-only collection of named byte blobs."""

    def __init__(self, uri: str, entries: list[str]):
        self.uri = uri
        self.entries = sorted(e for e in entries if not _is_hidden(e))

    def read(self, entry: str) -> bytes:
        """The bytes of ``entry`` (one of :attr:`entries`); raises ``OSError`` when it cannot be
        read. Each kind of source implements it."""
        raise NotImplementedError

    def read_many(self, entries: Iterable[str]) -> Iterator[tuple[str, bytes | OSError]]:
        """Yield ``(entry, bytes)`` in order; a read failure is yielded, not raised."""

        def safe_read(entry: str) -> tuple[str, bytes | OSError]:
            try:
                return entry, self.read(entry)
            except OSError as exc:
                return entry, exc

        with ThreadPoolExecutor(_READ_THREADS) as pool:
            yield from pool.map(safe_read, entries)

    def close(self) -> None:
        """Release what the source holds open."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_hidden(entry: str) -> bool:
    """OS and archiver litter (``.DS_Store``, ``__MACOSX/``, dot folders) is not data."""
    return any(part.startswith(".") or part == "__MACOSX" for part in PurePosixPath(entry).parts)


class LocalDirectory(Source):
    """Every file under the local directory ``root``, named by its path relative to ``root``."""

    def __init__(self, root: Path):
        self.root = root
        entries = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
        super().__init__(str(root), entries)

    def read(self, entry: str) -> bytes:
        """The bytes of the file ``entry`` under the root."""
        return (self.root / entry).read_bytes()


class LocalFile(Source):
    """One local file (a CSV, say): a source whose one entry is the file's name."""

    def __init__(self, path: Path):
        self.path = path
        super().__init__(str(path), [path.name])

    def read(self, entry: str) -> bytes:
        """The file's bytes, whatever ``entry`` names (the source has one entry)."""
        return self.path.read_bytes()


class ZipArchive(Source):
    """The files in a ``.zip`` archive, on disk or in memory; raises :class:`DataError` when
    ``file`` is not a readable archive."""

    def __init__(self, uri: str, file: str | Path | io.BytesIO):
        try:
            self.zip = zipfile.ZipFile(file)
        except zipfile.BadZipFile as exc:
            raise DataError(f"{uri} is not a readable .zip archive: {exc}") from exc
        super().__init__(uri, [i.filename for i in self.zip.infolist() if not i.is_dir()])

    def read(self, entry: str) -> bytes:
        """The bytes of the archive member ``entry``; a corrupt member raises ``OSError``."""
        try:
            return self.zip.read(entry)
        except (zipfile.BadZipFile, EOFError, ValueError) as exc:  # corrupt member
            raise OSError(f"corrupt zip member: {exc}") from exc

    def read_many(self, entries: Iterable[str]) -> Iterator[tuple[str, bytes | OSError]]:
        """Yield ``(entry, bytes)`` in order, one read at a time; a read failure is yielded, not
        raised."""
        # ZipFile shares one file handle: read sequentially (decompression is cheap).
        for entry in entries:
            try:
                yield entry, self.read(entry)
            except OSError as exc:
                yield entry, exc

    def close(self) -> None:
        """Close the archive and the file it holds open."""
        self.zip.close()


class GCSPrefix(Source):
    """The objects under ``gs://bucket/prefix``, named by their paths below the prefix."""

    def __init__(self, uri: str, bucket_name: str, prefix: str, names: list[str]):
        self.bucket = gcs_client().bucket(bucket_name)
        self.prefix = prefix
        super().__init__(uri, [n[len(prefix):] for n in names])

    def read(self, entry: str) -> bytes:
        """Download the object ``entry`` below the prefix; a GCS failure raises ``OSError``."""
        from google.api_core.exceptions import GoogleAPIError

        try:
            return self.bucket.blob(self.prefix + entry).download_as_bytes()
        except GoogleAPIError as exc:
            raise OSError(f"cannot download gs://{self.bucket.name}/{self.prefix}{entry}: {exc}") from exc


def open_source(uri: str) -> Source:
    """Open a data source, or raise :class:`DataError` if it does not exist."""
    if is_gcs_uri(uri):
        return _open_gcs(uri)
    path = Path(uri).expanduser()
    if not path.exists():
        raise DataError(f"source does not exist: {uri}")
    if path.is_dir():
        return LocalDirectory(path)
    if path.suffix.lower() == ".zip":
        return ZipArchive(uri, path)
    return LocalFile(path)


def _open_gcs(uri: str) -> Source:
    try:
        bucket_name, prefix = split_gcs_uri(uri)
    except ValueError as exc:
        raise DataError(str(exc)) from exc
    from google.api_core.exceptions import GoogleAPIError

    client = gcs_client()
    try:
        if prefix and not prefix.endswith("/"):
            blob = client.bucket(bucket_name).get_blob(prefix)
            if blob is not None:  # a single object: an archive or a CSV file
                data = blob.download_as_bytes()
                if prefix.lower().endswith(".zip"):
                    return ZipArchive(uri, io.BytesIO(data))
                return _InMemoryFile(uri, PurePosixPath(prefix).name, data)
            prefix += "/"
        names = [b.name for b in client.list_blobs(bucket_name, prefix=prefix) if not b.name.endswith("/")]
    except GoogleAPIError as exc:
        raise DataError(f"cannot read {uri}: {exc}") from exc
    if not names:
        raise DataError(f"source does not exist: {uri} (no objects under that prefix)")
    return GCSPrefix(uri, bucket_name, prefix, names)


class _InMemoryFile(Source):
    def __init__(self, uri: str, name: str, data: bytes):
        self.data = data
        super().__init__(uri, [name])

    def read(self, entry: str) -> bytes:
        return self.data
