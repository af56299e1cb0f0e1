"""Token counts: the regex estimate (approx:v1) against the named offline tokenizers (qwen2,
deepseek) on every real trace shipped in curate/data/real/traces (1,547 traces).

    python -m bench.bench_tokens

Prints, per tokenizer: total real/approx ratio, per-trace error of the raw and the scaled estimate
(mean and 95th percentile of |estimate - real| / real), per-source ratios, and the seconds each
counter took. The ratios are curate.ops.structure.tokens.APPROX_RATIO.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import polars as pl

from curate import read
from curate.ops.structure.tokens import approx_expr, count_tokens

TRACES = Path(__file__).resolve().parents[1] / "curate" / "data" / "real" / "traces"


def main() -> None:
    df = read(sorted(TRACES.glob("*.jsonl.gz"))).to_polars()
    texts = (df["thinking"].fill_null("") + df["solution"].fill_null("")).to_list()
    chars = np.array([len(t) for t in texts])
    t0 = time.perf_counter()
    approx = pl.DataFrame({"t": texts}).select(approx_expr("t"))["t"].to_numpy()
    print(f"{len(texts)} traces, {chars.sum():,} chars; approx:v1 {time.perf_counter() - t0:.2f} s")
    sources = df["source"].to_numpy()
    for name in ("qwen2", "deepseek"):
        count_tokens(["warm up"], name)
        t0 = time.perf_counter()
        real = np.array(count_tokens(texts, name))
        secs = time.perf_counter() - t0
        ratio = real.sum() / approx.sum()
        raw = np.abs(approx - real) / real * 100
        scaled = np.abs(approx * ratio - real) / real * 100
        per_char = real.sum() / chars.sum()
        by_chars = np.abs(chars * per_char - real) / real * 100
        print(f"{name}: {real.sum():,} tokens in {secs:.1f} s; real/approx {ratio:.3f}; "
              f"raw error mean {raw.mean():.1f}% p95 {np.percentile(raw, 95):.1f}%; "
              f"scaled mean {scaled.mean():.1f}% p95 {np.percentile(scaled, 95):.1f}%; "
              f"chars/{1 / per_char:.2f} mean {by_chars.mean():.1f}%")
        for s in sorted(set(sources)):
            m = sources == s
            print(f"  {s}: {m.sum()} traces, real/approx {real[m].sum() / approx[m].sum():.3f}")


if __name__ == "__main__":
    main()
