"""On-disk completion cache: SQLite, one row per (model, prompt, sampling params, seed).

The key is a SHA-256 of those four (params include the seed and ``n``); the value is the JSON
list of the prompt's completions. Writes are transactions (WAL mode), so a run killed mid-batch
loses at most the batch in flight and several processes may share one file. Lookups go in
chunks of ``IN (...)`` queries, which keeps the all-hits path (a resumed run) far above 50k
prompts/s on one core.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from curate.models.base import Completion

_CHUNK = 900  # below SQLite's default limit of 999 host parameters on old builds


def default_cache_path() -> Path:
    """``$CURATE_CACHE_DIR/generations.sqlite``, else ``~/.cache/curate/generations.sqlite``."""
    base = os.environ.get("CURATE_CACHE_DIR") or Path.home() / ".cache" / "curate"
    return Path(base) / "generations.sqlite"


def cache_key(model_id: str, prompt: str, params: dict[str, Any] | str) -> str:
    """Hex key of one request: model, prompt and sampling parameters (seed and n included).

    ``params`` may be given already serialised (``params_text``) to hash many prompts fast.
    """
    text = params if isinstance(params, str) else params_text(params)
    return hashlib.sha256(f"{model_id}\x00{text}\x00".encode() + prompt.encode("utf-8", "surrogatepass")).hexdigest()


def params_text(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)


def dump_completions(completions: Sequence[Completion]) -> str:
    """The JSON text a prompt's completions are kept as (the cache's values, the ray engine's
    generation files)."""
    return json.dumps([[c.text, c.prompt_tokens, c.completion_tokens, c.finish_reason, c.error] for c in completions])


def load_completions(text: str) -> list[Completion]:
    from curate.models.base import Completion

    return [Completion(*c) for c in json.loads(text)]


def _while_locked(statement: Callable[[], Any], seconds: float = 60.0) -> Any:
    """Run ``statement``, again after a short random wait while the file is locked (up to ``seconds``)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return statement()
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.01 + random.random() * 0.05)


class GenerationCache:
    """A SQLite file of completions keyed by ``cache_key``; safe across threads and processes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        conn = self._conn()
        with conn:
            _while_locked(lambda: conn.execute("CREATE TABLE IF NOT EXISTS completions ("
                                               "key TEXT PRIMARY KEY, model TEXT NOT NULL, value TEXT NOT NULL)"))

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60)
            # switching a new file to WAL takes a lock SQLite's busy timeout does not wait for: several
            # workers opening the same new cache at once (the ray engine's actors) must take turns
            _while_locked(lambda: conn.execute("PRAGMA journal_mode=WAL"))
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def get_many(self, keys: Sequence[str]) -> dict[str, list[Completion]]:
        """The cached completions of every key present."""
        conn = self._conn()
        out: dict[str, list[Completion]] = {}
        unique = list(dict.fromkeys(keys))
        for i in range(0, len(unique), _CHUNK):
            chunk = unique[i:i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for key, value in conn.execute(f"SELECT key, value FROM completions WHERE key IN ({marks})", chunk):
                out[key] = load_completions(value)
        return out

    def put_many(self, model_id: str, items: dict[str, list[Completion]]) -> None:
        """Store completions (one transaction; an existing key is replaced)."""
        rows = [(k, model_id, dump_completions(comps)) for k, comps in items.items()]
        conn = self._conn()
        with conn:
            conn.executemany("INSERT OR REPLACE INTO completions (key, model, value) VALUES (?, ?, ?)", rows)

    def __len__(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM completions").fetchone()[0]
