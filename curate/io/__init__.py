"""Readers, format adapters, writers and exporters."""

from curate.io.export import export
from curate.io.formats import FORMATS
from curate.io.read import Source, read

__all__ = ["FORMATS", "Source", "export", "read"]
