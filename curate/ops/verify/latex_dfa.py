"""A warm start for latex2sympy's ANTLR parser: the prediction DFA learned from typical answers, shipped.

ANTLR's adaptive prediction caches what it learns about the grammar in one DFA per decision (and
the lexer in its own), shared by every parser of a process. A fresh process starts with them empty
and rebuilds them from the grammar's ATN as it meets new token sequences, which costs about 40% of
a cold process's math verification (2,075 real rows: 5.5 CPU s cold, 3.3 s on a second pass), and
every verify worker is a fresh process. ``build`` parses the 7,474 answers of the MATH training
split (bundled, ``curate/data/real/problems``; training answers, not benchmark ones) and pickles
both DFAs into ``latex_dfa.pkl.gz`` beside this module; ``load`` puts them back, once per process
(the pool's zygote, so every fork starts warm). The DFA only remembers predictions ANTLR would
compute anyway, so parse trees and verdicts are the same (``tests/test_verify_math.py`` checks both).

The file is keyed by the antlr4 runtime's version and a hash of the grammar's serialized ATNs;
under another version it is not loaded and parsing starts cold, as before. Rebuild it with
``python -m curate.ops.verify.latex_dfa`` after upgrading latex2sympy2_extended or antlr4.
"""

from __future__ import annotations

import gc
import gzip
import hashlib
import io
import json
import logging
import operator
import os
import pickle
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any, BinaryIO

PATH = Path(__file__).with_name("latex_dfa.pkl.gz")
ANSWERS = Path(__file__).resolve().parents[2] / "data" / "real" / "problems" / "deepscaler_train_math.json.gz"
OFF_ENV = "CURATE_COLD_LATEX"  # set to 1 to start cold (A/B runs, tests)
log = logging.getLogger(__name__)


def _grammar() -> tuple[Any, Any]:
    from latex2sympy2_extended.antlr_parser import PSLexer, PSParser
    return PSParser, PSLexer


def key() -> str:
    """What the pickled DFA depends on: the runtime's classes and the grammar's ATN numbering."""
    parser, lexer = _grammar()
    atns = json.dumps([sys.modules[g.__module__].serializedATN() for g in (parser, lexer)]).encode()
    return f"antlr4 {version('antlr4-python3-runtime')}; atn {hashlib.sha256(atns).hexdigest()[:16]}"


def _atns() -> dict[str, Any]:
    parser, lexer = _grammar()
    return {"parser": parser.atn, "lexer": lexer.atn}


class _Pickler(pickle.Pickler):
    """Pickles the DFAs with the grammar's ATN states and the runtime's singletons by reference.

    A state is pickled as ``atn.states[n]`` (the list by persistent id), a singleton as
    ``getattr(cls, name)``: the pickle's memo keeps each, so meeting it again is one memo lookup.
    A parser config (~80k of them) is its constructor's call, not a slot-by-slot rebuild: half
    the bytes and half the load time.
    """

    def __init__(self, file: BinaryIO):
        super().__init__(file, protocol=4)
        from antlr4.atn.ATNConfig import ATNConfig
        from antlr4.atn.ATNState import ATNState
        from antlr4.atn.SemanticContext import SemanticContext
        from antlr4.PredictionContext import PredictionContext
        self.state_type, self.config_type = ATNState, ATNConfig
        self.names = {id(atn.states): f"{name} states" for name, atn in _atns().items()}
        self.singletons = {id(PredictionContext.EMPTY): (PredictionContext, "EMPTY"),
                           id(SemanticContext.NONE): (SemanticContext, "NONE")}

    def persistent_id(self, obj: Any) -> Any:
        return self.names.get(id(obj))

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, self.state_type):
            return operator.getitem, (obj.atn.states, obj.stateNumber)
        if id(obj) in self.singletons:
            return getattr, self.singletons[id(obj)]
        if type(obj) is self.config_type:  # not its subclass LexerATNConfig: that one pickles as usual
            rest = {"reachesIntoOuterContext": obj.reachesIntoOuterContext,
                    "precedenceFilterSuppressed": obj.precedenceFilterSuppressed}
            args = (obj.state, obj.alt, obj.context, obj.semanticContext)
            return type(obj), args, (None, rest) if any(rest.values()) else None
        return NotImplemented


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO):
        super().__init__(file)
        self.objects = {f"{name} states": atn.states for name, atn in _atns().items()}

    def persistent_load(self, pid: Any) -> Any:
        return self.objects[pid]


def _tables() -> tuple[list, list, dict]:
    parser, lexer = _grammar()
    return parser.decisionsToDFA, lexer.decisionsToDFA, parser.sharedContextCache.cache


def dump(path: Path = PATH) -> None:
    """Write this process's DFAs (atomically) under the current key."""
    from curate.io.write import replacing  # noqa: PLC0415 - pyarrow: only when building, not in the zygote

    buf = io.BytesIO()
    _Pickler(buf).dump((key(), *_tables()))
    with replacing(path) as tmp:
        tmp.write_bytes(gzip.compress(buf.getvalue(), compresslevel=9, mtime=0))


def load(path: Path = PATH) -> bool:
    """Install the shipped DFAs in this process if they match its grammar and runtime; else stay cold."""
    if os.environ.get(OFF_ENV) == "1" or not path.exists():
        return False
    collecting = gc.isenabled()
    gc.disable()  # ~100k new objects: the collector would walk the process's heap a few hundred times
    try:
        with gzip.open(path, "rb") as fh:
            stored = _Unpickler(fh).load()
        if stored[0] != key():
            log.debug("%s was built for %s, not %s: LaTeX parsing starts cold", path.name, stored[0], key())
            return False
        parser_dfa, lexer_dfa, contexts = _tables()
        parser_dfa[:], lexer_dfa[:] = stored[1], stored[2]
        contexts.update(stored[3])
        return True
    except Exception as e:  # noqa: BLE001 - a warm start is an optimisation; never fail a run over it
        log.warning("could not load %s (%s: %s): LaTeX parsing starts cold", path.name, type(e).__name__, e)
        return False
    finally:
        if collecting:
            gc.enable()


def training_answers() -> list[str]:
    """The MATH training split's answers (bundled), the corpus the DFA is learned from."""
    rows = json.loads(gzip.decompress(ANSWERS.read_bytes()))
    return [str(r["answer"]) for r in rows if r.get("answer") is not None]


def build(answers: list[str]) -> None:
    """Learn the DFAs by parsing each answer as verify parses a reference (from cold)."""
    from curate.ops.verify import math as verify_math  # noqa: PLC0415 - installs the two-stage parse

    for answer in answers:
        try:
            verify_math._gold(answer)
        except Exception:  # noqa: BLE001, S112 - an answer that does not parse still taught the DFA
            continue


def main() -> None:
    os.environ[OFF_ENV] = "1"  # learn from cold
    build(training_answers())
    dump()
    print(f"wrote {PATH} ({PATH.stat().st_size:,} bytes; {key()})")


if __name__ == "__main__":
    main()
