"""Generate a large documentation corpus of Markdown and Jupyter notebooks for the scale benchmark.

The mix mirrors ``shared/corpora/langgraph-docs`` (about half the files are notebooks, and most of
a notebook's bytes are base64 image outputs): by default 80% of the bytes are notebook outputs
(random PNG-like payloads, never repeated) and 20% prose, headings, lists and code. Every
sentence is drawn from a seeded random generator, so no two files (and no two chunks) are
duplicates, and the same seed gives the same corpus.

    python bench/gen_corpus.py /tmp/docingest-bench/corpus-100mb --size 100MB
    python bench/gen_corpus.py /tmp/docingest-bench/corpus-1gb --size 1GB

Write it outside the repository (or under the git-ignored ``bench/results/``): never commit it.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import sys
from pathlib import Path

_WORDS = (
    "graph node edge state checkpoint stream agent tool message reducer channel thread config "
    "runnable invoke batch async memory store vector index retriever prompt template model "
    "schema field value update interrupt resume human loop branch condition router subgraph "
    "persistence saver snapshot history replay time travel deploy server client api key token "
    "cache limit retry timeout error handler callback event trace span metric log queue worker "
    "task job schedule cron webhook assistant run input output parser loader splitter chunk "
    "document summary embedding similarity search filter metadata namespace tenant user session"
).split()
_FUNCS = ("compile", "invoke", "stream", "add_node", "add_edge", "get_state", "update_state", "bind_tools")
_LANGS = ("python", "bash", "json", "yaml")


def _unit(n: str) -> int:
    n = n.strip().upper()
    for suffix, mult in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10), ("B", 1)):
        if n.endswith(suffix):
            return int(float(n[: -len(suffix)]) * mult)
    return int(n)


class _Text:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.serial = 0

    def words(self, n: int) -> str:
        self.serial += 1
        words = self.rng.choices(_WORDS, k=n)
        # a serial number and a random identifier make every sentence unique
        words.insert(self.rng.randrange(len(words) + 1), f"v{self.serial}_{self.rng.getrandbits(24):x}")
        return " ".join(words)

    def sentence(self) -> str:
        s = self.words(self.rng.randint(6, 22))
        return s[0].upper() + s[1:] + self.rng.choice((".", ".", ".", "?", ":"))

    def paragraph(self) -> str:
        return " ".join(self.sentence() for _ in range(self.rng.randint(2, 7)))

    def code(self) -> str:
        lines = []
        for _ in range(self.rng.randint(3, 14)):
            fn = self.rng.choice(_FUNCS)
            arg = self.words(2).replace(" ", "_")
            lines.append(f"result_{self.serial} = builder.{fn}({arg!r}, retries={self.rng.randint(0, 9)})")
        return "\n".join(lines)

    def section(self, level: int) -> list[str]:
        out = ["#" * level + " " + self.words(self.rng.randint(2, 5)).title()]
        for _ in range(self.rng.randint(1, 5)):
            kind = self.rng.random()
            if kind < 0.6:
                out.append(self.paragraph())
            elif kind < 0.8:
                out.append("\n".join(f"- {self.sentence()}" for _ in range(self.rng.randint(2, 6))))
            else:
                out.append(f"```{self.rng.choice(_LANGS)}\n{self.code()}\n```")
        return out


def markdown_file(text: _Text, target: int) -> str:
    parts = [f"---\ntitle: {text.words(4)}\ntags: [{', '.join(text.words(3).split()[:3])}]\n---", ""]
    size = 0
    level = 1
    while size < target:
        block = "\n\n".join(text.section(level))
        parts.append(block)
        size += len(block)
        level = text.rng.choice((2, 2, 3, 3, 4))
    return "\n\n".join(parts) + "\n"


def notebook_file(text: _Text, target_text: int, target_payload: int) -> str:
    rng = text.rng
    cells: list[dict[str, object]] = []
    size = 0
    payload = 0
    while size < target_text or payload < target_payload:
        cells.append({"cell_type": "markdown", "metadata": {}, "source": "\n\n".join(text.section(2))})
        source = text.code()
        outputs: list[dict[str, object]] = [
            {"output_type": "stream", "name": "stdout", "text": [text.sentence() + "\n"]}
        ]
        if payload < target_payload:
            n = min(target_payload - payload, rng.randint(20_000, 400_000))
            png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + rng.randbytes(n * 3 // 4)).decode()
            outputs.append(
                {
                    "output_type": "display_data",
                    "metadata": {},
                    "data": {"image/png": png, "text/plain": ["<IPython.core.display.Image object>"]},
                }
            )
            payload += len(png)
        cells.append(
            {
                "cell_type": "code",
                "execution_count": len(cells),
                "metadata": {},
                "outputs": outputs,
                "source": source,
            }
        )
        size += len(source) + len(str(cells[-2]["source"]))
    notebook = {
        "cells": cells,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    return json.dumps(notebook, indent=1) + "\n"


def generate(out: Path, size: int, *, seed: int = 0, payload_share: float = 0.8) -> tuple[int, int]:
    """Write about ``size`` bytes of docs under ``out``; returns (files, bytes written)."""
    rng = random.Random(seed)
    text = _Text(rng)
    out.mkdir(parents=True, exist_ok=True)
    written = files = 0
    while written < size:
        section = out / f"section-{files // 200:04d}"
        section.mkdir(exist_ok=True)
        if rng.random() < 0.5:
            body = markdown_file(text, rng.randint(2_000, 30_000))
            name = f"page-{files:06d}.md"
        else:
            total = rng.randint(100_000, 1_400_000)
            body = notebook_file(text, int(total * (1 - payload_share)), int(total * payload_share))
            name = f"notebook-{files:06d}.ipynb"
        data = body.encode()
        (section / name).write_bytes(data)
        written += len(data)
        files += 1
    return files, written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", default="100MB", help="total size, e.g. 100MB or 1GB")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--payload-share", type=float, default=0.8, help="share of notebook bytes in outputs")
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        print(f"{args.out} exists and is not empty: remove it first", file=sys.stderr)
        return 2
    files, written = generate(args.out, _unit(args.size), seed=args.seed, payload_share=args.payload_share)
    print(f"wrote {files} files, {written / 1e6:.1f} MB to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
