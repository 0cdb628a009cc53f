"""A user's own ingestion script: wrapper functions around the OpenAI client, no docingest.

Usage: python plain_pipeline.py DOCS_DIR [--fail-after N] [--async]
"""

import asyncio
import sys
from pathlib import Path

import openai

SYSTEM = "You summarize documentation for a search index."


def chunks_of(text: str, size: int = 400) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def summarize(client: openai.OpenAI, path: str, chunk: str) -> str:
    response = client.chat.completions.create(  # the summary call site
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Summarize this part of {path}:\n\n{chunk}"},
        ],
        max_tokens=64,
    )
    return response.choices[0].message.content or ""


def embed(client: openai.OpenAI, texts: list[str]) -> list[list[float]]:
    response = client.embeddings.create(  # the embedding call site
        model="text-embedding-3-small", input=texts
    )
    return [d.embedding for d in response.data]


def title_of(client: openai.OpenAI, path: str, text: str) -> str:
    response = client.chat.completions.create(  # the title call site
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": f"Give a title to the document {path}.\n{text[:300]}"}],
        max_tokens=16,
    )
    return response.choices[0].message.content or ""


async def asummarize(client: openai.AsyncOpenAI, path: str, chunk: str) -> str:
    response = await client.chat.completions.create(  # the async summary call site
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Summarize this part of {path}:\n\n{chunk}"},
        ],
        max_tokens=64,
    )
    return response.choices[0].message.content or ""


def main(argv: list[str]) -> int:
    docs = Path(argv[0])
    fail_after = int(argv[argv.index("--fail-after") + 1]) if "--fail-after" in argv else None
    client = openai.OpenAI()  # OPENAI_BASE_URL / OPENAI_API_KEY from the environment
    calls = 0
    for file in sorted(docs.glob("*.md")):
        text = file.read_text()
        title_of(client, file.name, text)
        parts = chunks_of(text)
        for part in parts:
            summarize(client, file.name, part)
            calls += 1
            if fail_after is not None and calls >= fail_after:
                raise RuntimeError(f"simulated crash after {calls} summaries")
        embed(client, parts)
    if "--async" in argv:

        async def run_async() -> None:
            aclient = openai.AsyncOpenAI()
            texts = [(f.name, f.read_text()[:400]) for f in sorted(docs.glob("*.md"))]
            await asyncio.gather(*(asummarize(aclient, name, text) for name, text in texts))
            await aclient.close()

        asyncio.run(run_async())
    print(f"done: {calls} summaries")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
