"""Start-up cost: `curate --help` and importing the CLI load no heavy library (issue 19)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("polars", "pyarrow", "numpy", "pandas", "torch", "datasets", "ray", "math_verify", "sympy", "datasketch",
         "transformers", "rapidfuzz", "matplotlib", "huggingface_hub", "yaml", "rich")


def _loaded_after(code: str) -> list[str]:
    """The heavy modules a fresh interpreter holds after running ``code``."""
    probe = f"{code}\nimport sys, json\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["--version"]])
def test_help_loads_no_heavy_library(argv):
    code = ("import contextlib, io\nfrom curate.cli import main\n"
            f"with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            f"    main({argv!r})")
    assert _loaded_after(code) == []


def test_import_curate_is_lazy_but_complete():
    assert _loaded_after("import curate") == []
    loaded = _loaded_after("from curate import read, Pipeline, run_recipe, TRACE_SCHEMA")
    assert "pyarrow" in loaded  # the names resolve on first use


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_a_run_without_the_card_does_not_import_pandas(tmp_path, math500_sample, kind):
    """pyarrow imports pandas (~0.4 s) when it converts Python objects (pa.array, from_pydict,
    pa.scalar) or loads pyarrow.dataset (pq.read_table); reading JSONL or a Parquet of text columns
    and writing shards and rejects need neither."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = math500_sample.read_bytes().splitlines()
    if kind == "jsonl":
        data = tmp_path / "in.jsonl"
        data.write_bytes(b"\n".join(lines) + b"\nnot json\n")  # one reject, so rejects are written
    else:
        recs = [json.loads(line) for line in lines]
        data = tmp_path / "in.parquet"
        recs.append({**recs[0], "idx": "x", "question": " "})  # one reject, so rejects are written
        pq.write_table(pa.table({"id": [str(r["idx"]) for r in recs], "problem": [r["question"] for r in recs],
                                 "thinking": [r["code"][0] for r in recs], "solution": ["s"] * len(recs)}), data)
    recipe = tmp_path / "noop.yaml"
    recipe.write_text(f"name: noop\ninput: {{path: {data}}}\nsteps: []\noutput: {{path: {tmp_path / 'out'}}}\n")
    code = ("import contextlib, io\nfrom curate.cli import main\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            f"    main(['run', {str(recipe)!r}, '--no-card', '-q'])")
    loaded = _loaded_after(code)
    funnel = json.loads((tmp_path / "out" / "manifest.json").read_text())["funnel"]
    assert (funnel[0]["name"], funnel[0]["kept"], funnel[0]["rejected"]) == ("read", 120, 1)
    assert "pyarrow" in loaded and "polars" in loaded and "pandas" not in loaded
