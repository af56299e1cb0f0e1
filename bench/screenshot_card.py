"""Render a dataset card to HTML and screenshot it with headless Chromium, to look at it as a reader would.

    curate run pipelines/structure_vs_content.yaml --out out/svc
    python bench/screenshot_card.py out/svc /tmp/card.png      # needs `markdown` and /usr/bin/chromium

The hub renders cards itself; this is the closest local check that the tables and plots show.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import markdown
from huggingface_hub import DatasetCard

STYLE = ("body{font-family:sans-serif;max-width:1000px;margin:20px auto;font-size:13px}"
         "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}")


def main(folder: Path, png: Path, height: int = 6000) -> None:
    card = DatasetCard.load(folder / "README.md")
    body = markdown.markdown(card.text, extensions=["tables", "fenced_code"])
    page = folder / ".card.html"  # beside the card, so the relative plot paths resolve
    page.write_text(f"<html><head><meta charset='utf-8'><style>{STYLE}</style></head><body>{body}</body></html>")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", f"--window-size=1100,{height}",
                        f"--screenshot={png.resolve()}", page.resolve().as_uri()],
                       check=True, capture_output=True, timeout=120)
    page.unlink()
    print(png)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), *(int(a) for a in sys.argv[3:4]))
