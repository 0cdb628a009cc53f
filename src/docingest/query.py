"""``docingest query``: embed the question with the same model, rank stored chunks by cosine."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import openai

from docingest.account import StatsCollector
from docingest.config import redact_url
from docingest.errors import DocingestError
from docingest.execute import ClientSettings, build_async_client
from docingest.store import Hit, KnowledgeBase


async def asearch(
    text: str,
    *,
    db: Path,
    k: int = 5,
    embedding_model: str = "text-embedding-3-small",
    base_url: str | None = None,
    api_key: str | None = None,
) -> list[Hit]:
    if not text.strip():
        raise DocingestError(
            'the query is empty: pass the text to search for, e.g. docingest query "persistence"'
        )
    if k < 1:
        raise DocingestError(f"-k must be at least 1 (got {k})")
    if not db.exists():
        raise DocingestError(
            f"no knowledge base at {db}: run docingest ingest SOURCE first (without --dry-run)"
        )
    with KnowledgeBase(db) as kb:
        models = kb.embedding_models()
        if not models:
            return []
        if embedding_model not in models:
            have = ", ".join(f"{m} ({n:,} chunks)" for m, n in models.items())
            raise DocingestError(
                f"no embeddings of {embedding_model} in {db} (it has: {have}): "
                f"pass --embedding-model {next(iter(models))}"
            )
        settings = ClientSettings(embedding_model=embedding_model, base_url=base_url, api_key=api_key)
        client = build_async_client(settings, StatsCollector(None))
        try:
            response = await client.embeddings.create(model=embedding_model, input=[text])
        except openai.APIError as exc:
            where = redact_url(base_url) if base_url else "the OpenAI API"
            raise DocingestError(
                f"could not embed the query with {embedding_model} at {where}: {exc}"
            ) from exc
        finally:
            await client.close()
        vector = np.asarray(response.data[0].embedding, dtype=np.float32)
        return kb.query(vector, model=embedding_model, k=k)


def search(text: str, **kwargs: object) -> list[Hit]:
    return asyncio.run(asearch(text, **kwargs))  # type: ignore[arg-type]
