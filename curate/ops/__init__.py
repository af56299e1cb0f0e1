"""The built-in operators, one module per family. Importing this registers them by recipe name."""

from curate.ops.answer import ExtractAnswer
from curate.ops.dedup import ExactDedup
from curate.ops.filter import Filter
from curate.ops.select import Sample

__all__ = ["ExactDedup", "ExtractAnswer", "Filter", "Sample"]
