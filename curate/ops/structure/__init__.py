"""The structure family: segment_steps and profile (step) and their helpers, segmentation, keyword
lists and token counts (which the corruption, filter, selection and difficulty operators use too)."""

from curate.ops.structure.keywords import (
    BACKTRACK_KEYWORDS,
    REASONING_KEYWORDS,
    REFLECTION_KEYWORDS,
    count_keywords,
    find_keywords,
)
from curate.ops.structure.segment import INLINE_TRANSITIONS, TRANSITIONS, Steps, step_starts
from curate.ops.structure.tokens import APPROX_METHOD, approx_expr, count_tokens

__all__ = [
    "APPROX_METHOD", "BACKTRACK_KEYWORDS", "INLINE_TRANSITIONS", "REASONING_KEYWORDS",
    "REFLECTION_KEYWORDS", "TRANSITIONS", "Steps", "approx_expr", "count_keywords", "count_tokens",
    "find_keywords", "step_starts",
]
