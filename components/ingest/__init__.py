"""Ingest: read FER2013 from a local path, a ``.zip`` or ``gs://``, as CSV or image folders.

See :func:`components.ingest.ingest.ingest`.
"""

from components.ingest.ingest import ingest

__all__ = ["ingest"]
