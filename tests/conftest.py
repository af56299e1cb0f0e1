"""Shared fixtures: the real data shipped in the repository (curate/data), served without ../shared."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import pytest

from curate.models.serve import make_server, start_in_thread

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "curate" / "data" / "samples"
REAL = REPO / "curate" / "data" / "real"  # gzipped copies of ../shared/data (GPQA left out), see its README
SHARED = Path(os.environ.get("CURATE_SHARED_DATA", REPO.parent / "shared" / "data"))  # only for GPQA's text

os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    return SAMPLES


@pytest.fixture(scope="session")
def math500_sample() -> Path:
    return SAMPLES / "skythought_correct5k27b_math500.jsonl"


@pytest.fixture(scope="session")
def shared_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped real data (curate/data/real) unpacked into the layout of ../shared/data:
    traces/, problems/, responses/, benchmarks/ with their original file names."""
    root = tmp_path_factory.mktemp("shared_data")
    for gz in sorted(REAL.rglob("*.gz")):
        dest = root / gz.relative_to(REAL).with_suffix("")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(gz, "rb") as src, dest.open("wb") as out:
            shutil.copyfileobj(src, out)
    return root


@pytest.fixture(scope="session")
def gpqa_rows() -> list[dict]:
    """GPQA-Diamond's questions in plain text. Never shipped (its authors ask that the text not be
    republished; the package carries a fingerprint only), so this reads ../shared/data or
    $CURATE_SHARED_DATA and skips where neither holds it."""
    path = SHARED / "benchmarks" / "limo_gpqa_test.jsonl"
    if not path.exists():
        pytest.skip(f"{path} not present: GPQA's text is not shipped by design")
    return [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]


@pytest.fixture(scope="session")
def responses(shared_data: Path) -> list[dict]:
    """Real MATH problems with 8 real model samples each and the graders' per-sample labels."""
    return [json.loads(line) for line in (shared_data / "responses" / "simplerl_math_cot_100.jsonl").open()]


@pytest.fixture(scope="session")
def replay(responses: list[dict]):
    """An OpenAI-compatible loopback server that answers a solve prompt with that problem's real samples."""
    by_problem = {r["question"]: r["code"] for r in responses}
    calls: list[dict] = []

    def hook(path: str, body: dict):
        calls.append(body)
        problem = next(p for p in by_problem if body["prompt"].startswith(p))
        samples = by_problem[problem][: body["n"]]
        return (200, {"choices": [{"index": i, "text": s, "finish_reason": "stop"} for i, s in enumerate(samples)],
                      "usage": {"prompt_tokens": 50, "completion_tokens": 300 * len(samples)}}, {})

    server = make_server(None, hook=hook)  # type: ignore[arg-type]  (the hook answers every request)
    url = start_in_thread(server)
    yield url, calls
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random model (curate.models.tiny); its tests skip where torch is not installed."""
    pytest.importorskip("torch", reason="the tiny model needs torch (pip install 'curate-cot[train]')")
    from curate.models.tiny import build

    return build(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread: tiny matmuls gain nothing from more, and spin-waiting OpenMP
    threads slow down 10-fold when other processes share this machine's two cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

