"""One prompt template from training to evaluation: the dataset's markers and system prompt.

A student trained on ``[system, user, assistant]`` with one set of thinking markers and asked, at
evaluation, with another system prompt or other markers, is not measuring the dataset. So a
:class:`Template` is resolved once from the dataset folder (:func:`dataset_template`), training
renders every trace with it, evaluation renders every benchmark prompt with it, and both record it
(``train_config.json``, ``scores.json``, ``validation.json``).

Sky-T1-layout data (``<|begin_of_thought|>`` markers) gets Sky-T1's own system prompt, verbatim:
the ``"Sky-T1"`` prompt type of the paper's evaluation harness (NovaSky-AI/SkyThought, branch
``corrupt``, ``skythought/Qwen2.5-Math/evaluation/utils.py``, selected by ``sh/eval.sh``'s
``PROMPT_TYPE``; the output files there are named ``test_Sky-T1_...``). The training system
prompt of the paper's datasets lives in their ``system`` column (LLaMA-Factory
``data/dataset_info.json``: ``"system": "system"``), which is not public; a dataset whose rows
carry their own system prompt (``extra["system"]``) keeps it.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from curate.prompts import SKY_T1_SYSTEM

STYLES = ("sky-t1", "think", "none")



@dataclass(frozen=True)
class Template:
    """How a problem becomes a prompt and a trace a response: markers ``style`` and ``system_prompt``."""

    style: str
    system_prompt: str | None
    source: str = ""  # why this template (recorded, not compared)

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"template style must be one of {', '.join(STYLES)}, not {self.style!r}")

    def messages(self, problem: str) -> list[dict[str, str]]:
        """The prompt turns for ``problem``: the system prompt (if any), then the user turn."""
        turns = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return turns + [{"role": "user", "content": problem}]

    def prompt(self, tokenizer: Any, problem: str) -> str:
        """The generation prompt as text, rendered with the model's chat template (as training does)."""
        turns = self.messages(problem)
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(t["content"] for t in turns) + "\n\n"

    def key(self) -> dict[str, Any]:
        """What must agree between training and evaluation."""
        return {"style": self.style, "system_prompt": self.system_prompt}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Template:
        return cls(data["style"], data.get("system_prompt"), data.get("source", ""))


SKY_T1 = Template("sky-t1", SKY_T1_SYSTEM, "Sky-T1 eval harness prompt (SkyThought@corrupt utils.py)")


def _row_systems(root: Path, config: str | None) -> Counter[str]:
    """System prompts the dataset's own rows carry (``extra["system"]``), counted."""
    import pyarrow.parquet as pq

    from curate.io.export import _dataset_files

    found: Counter[str] = Counter()
    for f in _dataset_files(root, config):
        if "extra" not in pq.read_schema(f).names:
            continue
        for value in pq.read_table(f, columns=["extra"]).column("extra").to_pylist():
            try:
                extra = json.loads(value) if isinstance(value, str) else (value or {})
            except ValueError:
                continue
            if isinstance(extra, dict) and isinstance(extra.get("system"), str) and extra["system"].strip():
                found[extra["system"]] += 1
    return found


def _source_markers(root: Path) -> str | None:
    """The thinking markers of the dataset's input files (from the manifest), sniffed from their start."""
    try:
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    paths = (manifest.get("input") or {}).get("paths") or []
    for p in paths:
        for cand in (Path(p), root / p, root.parent / p):
            if cand.is_file() and cand.suffix in (".jsonl", ".json"):
                head = cand.open(encoding="utf-8", errors="replace").read(1 << 16)
                if "<|begin_of_thought|>" in head:
                    return "sky-t1"
                if "<think>" in head:
                    return "think"
                break
    return None


def dataset_template(dataset: str | os.PathLike, config: str | None = None, *, style: str | None = None,
                     system_prompt: str | None = None) -> Template:
    """The template of a dataset folder: its own system prompt and markers, or the given overrides.

    Rows carrying a system prompt keep the most common one; its markers are the ones it names.
    Otherwise the input files' markers decide: Sky-T1 markers get Sky-T1's system prompt, ``<think>``
    gets none. ``style`` / ``system_prompt`` override (recorded as such).
    """
    root = Path(dataset)
    systems = _row_systems(root, config)
    own = systems.most_common(1)[0][0] if systems else None
    markers = None
    if own:
        markers = "sky-t1" if "<|begin_of_thought|>" in own else "think" if "<think>" in own else None
    markers = markers or _source_markers(root)
    if own:
        base = Template(markers or "think", own, "the dataset rows' own system prompt")
    elif markers == "sky-t1":
        base = SKY_T1
    elif markers == "think":
        base = Template("think", None, "the input's <think> markers, no system prompt")
    else:
        base = Template("think", None, "default: <think> markers, no system prompt")
    if style is None and system_prompt is None:
        return base
    return Template(style or base.style, system_prompt if system_prompt is not None else base.system_prompt,
                    "given" + (" (style)" if style else "") + (" (system prompt)" if system_prompt else ""))


def run_template(run: str | os.PathLike) -> Template | None:
    """The template a ``curate train`` run folder was trained with (None if it records none)."""
    for folder in (Path(run), Path(run).parent):
        path = folder / "train_config.json"
        if path.exists():
            data = json.loads(path.read_text()).get("template")
            return Template.from_json(data) if data else None
    return None
