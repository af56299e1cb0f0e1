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


# what the dataset card must not import (issue 19): the hub client, datasets, pandas, matplotlib
CARD_FREE = ("datasets", "pandas", "huggingface_hub.hf_api", "huggingface_hub.file_download", "matplotlib")
NOOP = "input: in.jsonl\nsteps:\n  - filter: {}\n"


def _noop_recipe(folder: Path, math500_sample: Path) -> Path:
    """A no-op recipe (one `filter: {}` step) over 5 real rows, as in BENCHMARKS.md *Start-up*."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "in.jsonl").write_text("".join(math500_sample.read_text().splitlines(keepends=True)[:5]))
    (folder / "r.yaml").write_text(NOOP)
    return folder / "r.yaml"


def _fresh(code: str, watched: tuple[str, ...], cwd: Path) -> dict:
    """Run ``code`` in a fresh interpreter; which of ``watched`` it imported, and its CPU seconds."""
    probe = (f"import sys, json, time\nt0 = time.process_time()\n{code}\n"
             f"print(json.dumps({{'loaded': [m for m in {watched!r} if m in sys.modules], "
             f"'cpu': time.process_time() - t0}}))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=cwd, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_writing_the_card_imports_no_datasets_hub_client_pandas_or_matplotlib(tmp_path, math500_sample):
    """The card of a finished folder, in a fresh interpreter: README.md and both plots written, none
    of CARD_FREE imported, and a generous CPU budget (~0.1 s here; datasets alone took ~1 s)."""
    from curate import run_recipe

    recipe = _noop_recipe(tmp_path, math500_sample)
    run_recipe(recipe, tmp_path / "out", progress=False, card=False)
    assert not (tmp_path / "out" / "README.md").exists()
    code = ("import curate.pipeline, curate.ops; curate.ops.registry()  # what the run has loaded\n"
            "t0 = time.process_time()\nfrom curate.card import write_card\nwrite_card('out')")
    result = _fresh(code, CARD_FREE + ("PIL", "huggingface_hub"), tmp_path)
    assert result["loaded"] == ["PIL", "huggingface_hub"]  # the card data class and the plots' library
    text = (tmp_path / "out" / "README.md").read_text()
    assert "- name: thinking\n    dtype: large_string\n" in text and "![Funnel](plots/funnel.png)" in text
    for name in ("funnel.png", "thinking_length.png"):
        assert (tmp_path / "out" / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["cpu"] < 0.6, f"writing the card of 5 rows took {result['cpu']:.2f} CPU s"


def test_a_noop_run_with_the_card_imports_no_datasets_hub_client_pandas_or_matplotlib(tmp_path, math500_sample):
    """The whole command, card included (the default), in a fresh interpreter."""
    _noop_recipe(tmp_path, math500_sample)
    code = ("import contextlib, io\nfrom curate.cli import main\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            "    main(['run', 'r.yaml', '--out', 'out', '-q'])")
    result = _fresh(code, CARD_FREE, tmp_path)
    assert result["loaded"] == []
    assert (tmp_path / "out" / "README.md").exists() and (tmp_path / "out" / "plots" / "funnel.png").exists()


@pytest.mark.parametrize("given", [None, "3"])
def test_a_run_asks_numpy_for_no_blas_threads_before_numpy_loads(tmp_path, math500_sample, given):
    """`curate run` sets OPENBLAS_NUM_THREADS=1 before numpy is imported (its helper threads spin
    ~0.1 CPU s at import, and no step needs BLAS); a value the user set is kept."""
    _noop_recipe(tmp_path, math500_sample)
    code = ("import contextlib, io, os, sys\nfrom curate.cli import main\nseen = []\n"
            "class Watch:\n"
            "    def find_spec(self, name, *a):\n"
            "        if name == 'numpy' and not seen: seen.append(os.environ.get('OPENBLAS_NUM_THREADS'))\n"
            "sys.meta_path.insert(0, Watch())\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            "    main(['run', 'r.yaml', '--out', 'out', '-q', '--no-card'])\n"
            "print(seen)")
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", **({"OPENBLAS_NUM_THREADS": given} if given else {})}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True,
                         env=env)
    assert out.stdout.strip().splitlines()[-1] == repr([given or "1"])


def test_import_curate_is_lazy_but_complete():
    assert _loaded_after("import curate") == []
    loaded = _loaded_after("from curate import read, Pipeline, run_recipe, TRACE_SCHEMA")
    assert "pyarrow" in loaded  # the names resolve on first use


@pytest.mark.parametrize(("kind", "steps"), [("jsonl", "[]"), ("parquet", "[]"),
                                            ("jsonl", "[decontaminate: {fields: [problem, thinking]}]")])
def test_a_run_without_the_card_does_not_import_pandas(tmp_path, math500_sample, kind, steps):
    """pyarrow imports pandas (~0.2-0.4 s) when it converts Python objects (pa.array, from_pydict,
    pa.scalar), loads pyarrow.dataset (pq.read_table) or turns an array into numpy (to_numpy);
    reading JSONL or a Parquet of text columns, decontaminating, and writing shards and rejects
    need none of these."""
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
    recipe.write_text(f"name: noop\ninput: {{path: {data}}}\nsteps: {steps}\noutput: {{path: {tmp_path / 'out'}}}\n")
    code = ("import contextlib, io\nfrom curate.cli import main\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            f"    main(['run', {str(recipe)!r}, '--no-card', '-q'])")
    loaded = _loaded_after(code)
    funnel = json.loads((tmp_path / "out" / "manifest.json").read_text())["funnel"]
    assert (funnel[0]["name"], funnel[0]["kept"], funnel[0]["rejected"]) == ("read", 120, 1)
    assert "pyarrow" in loaded and "polars" in loaded and "pandas" not in loaded
