"""Controlled corruptions of traces, the seed paper's ablation family: content and structure perturbed.

Content: ``corrupt_wrong_answer`` (synthetic wrong final answer), ``corrupt_digits``,
``remove_keywords``. Structure: ``shuffle_steps``, ``delete_steps``, ``insert_steps`` (these touch
the thinking block only; the solution is never modified). No operator changes the problem.

Shared contract of every corruption:

- **Seeded, per row.** Each row draws from its own RNG, seeded from (operator name, ``seed``, the
  row's ``id``), so a row's corruption does not depend on batching, order or the other rows; the
  same seed gives the same output, another seed another one.
- **Ratios.** ``ratio`` is a share of a row's *units* (steps, numbers, digits, keyword sentences or
  phrases). With ``sampling: exact`` (the default) exactly ``round_half_up(ratio * units)`` units are
  chosen, uniformly without replacement; with ``sampling: bernoulli`` (where offered) each unit is
  chosen independently with probability ``ratio`` (what the paper's digit script did).
  ``remove_keywords`` with ``per: row`` (and its model mode) draws whole rows with probability
  ``ratio`` instead, as the paper's keyword script did.
- **Steps.** The structural corruptions use the segmentation already on the row (``segment_steps``,
  rule- or model-made) when its offsets still tile the thinking, and their own rules otherwise.
- **Audit columns.** ``corrupt_kind``, ``corrupt_ratio``, ``corrupt_seed``, ``corrupt_units`` (units
  in the row), ``corrupt_touched`` (units changed) and per-operator lists of what was touched
  (``corrupt_steps``, ``corrupt_order``, ``corrupt_donors``, ``corrupt_spans``).
- **Ids.** ``id`` becomes the content hash of the corrupted row (``curate.schema.trace_id``), so a
  corrupted trace never passes for its clean original; ``original_id`` keeps the input's id (the
  first one, when corruptions are chained) so every variant joins back to its base row.
- **Untouched rows** (no unit to corrupt: empty thinking, no number...) are kept unchanged by default
  so all variants of a base share the same rows; ``on_untouched: reject`` drops them instead.
- **Coverage.** Each corruption reports ``corruption: {rows, target, changed}`` in its funnel entry;
  a run where fewer than 99% of the target rows changed says so at the end and in the card
  (``Corruption.coverage_warnings``).
- **Stale annotations.** When the input has ``steps_*`` columns (segment_steps) they follow the edit
  (offsets moved through it; a model rewrite is re-segmented by rules and ``steps_method`` says so);
  other annotations (``profile_*``, ``verify_*``) describe the clean row: run those steps after the
  corruption when a variant needs them.
"""

from curate.ops.corrupt.coverage import MIN_CHANGED_SHARE
from curate.ops.corrupt.digits import CorruptDigits
from curate.ops.corrupt.keywords import RemoveKeywords
from curate.ops.corrupt.steps import DeleteSteps, InsertSteps, ShuffleSteps
from curate.ops.corrupt.wrong_answer import CorruptWrongAnswer

__all__ = [
    "MIN_CHANGED_SHARE",
    "CorruptDigits",
    "CorruptWrongAnswer",
    "DeleteSteps",
    "InsertSteps",
    "RemoveKeywords",
    "ShuffleSteps",
]
