"""Helpers behind the structure and corruption operators: segmentation, keywords, token counts."""

from curate.structure.keywords import (
    BACKTRACK_KEYWORDS,
    REASONING_KEYWORDS,
    REFLECTION_KEYWORDS,
    count_keywords,
    find_keywords,
)
from curate.structure.segment import INLINE_TRANSITIONS, TRANSITIONS, Steps, step_starts
from curate.structure.tokens import APPROX_METHOD, approx_expr, count_tokens

__all__ = [
    "APPROX_METHOD", "BACKTRACK_KEYWORDS", "INLINE_TRANSITIONS", "REASONING_KEYWORDS",
    "REFLECTION_KEYWORDS", "TRANSITIONS", "Steps", "approx_expr", "count_keywords", "count_tokens",
    "find_keywords", "step_starts",
]
