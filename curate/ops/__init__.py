"""The built-in operators, one module per family. Importing this registers them by recipe name."""

from curate.ops.answer import ExtractAnswer
from curate.ops.choose import Choose
from curate.ops.corrupt import (
    CorruptDigits,
    CorruptWrongAnswer,
    DeleteSteps,
    InsertSteps,
    RemoveKeywords,
    ShuffleSteps,
)
from curate.ops.decontam.step import Decontaminate
from curate.ops.dedup.exact import ExactDedup
from curate.ops.dedup.minhash import MinHashDedup
from curate.ops.dedup.semantic import SemanticDedup
from curate.ops.difficulty import GradeDifficulty
from curate.ops.domains import ClassifyDomain
from curate.ops.filter import Filter
from curate.ops.generate import Generate
from curate.ops.reformat import Reformat
from curate.ops.rubric import ScoreReasoning
from curate.ops.select import Sample
from curate.ops.selection import SelectDiverse, SelectQuality, SelectTop
from curate.ops.shorten import Shorten
from curate.ops.structure.step import Profile, SegmentSteps
from curate.ops.verify.step import PairPreferences, Verify

__all__ = [
    "Choose",
    "ClassifyDomain",
    "CorruptDigits",
    "CorruptWrongAnswer",
    "Decontaminate",
    "DeleteSteps",
    "ExactDedup",
    "ExtractAnswer",
    "Filter",
    "Generate",
    "GradeDifficulty",
    "InsertSteps",
    "MinHashDedup",
    "PairPreferences",
    "Profile",
    "Reformat",
    "RemoveKeywords",
    "Sample",
    "ScoreReasoning",
    "SelectDiverse",
    "SelectQuality",
    "SelectTop",
    "SegmentSteps",
    "SemanticDedup",
    "Shorten",
    "ShuffleSteps",
    "Verify",
]
