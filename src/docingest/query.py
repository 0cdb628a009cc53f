"""``docingest query``: embed the question with the same model, rank stored chunks by cosine."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from docingest.account import StatsCollector
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
    if not db.exists():
        raise DocingestError(
            f"no knowledge base at {db}: run docingest ingest SOURCE first (without --dry-run)"
        )
    with KnowledgeBase(db) as kb:
        if not kb.counts().get("embeddings"):
            return []
        settings = ClientSettings(embedding_model=embedding_model, base_url=base_url, api_key=api_key)
        client = build_async_client(settings, StatsCollector(None))
        try:
            response = await client.embeddings.create(model=embedding_model, input=[text])
        finally:
            await client.close()
        vector = np.asarray(response.data[0].embedding, dtype=np.float32)
        return kb.query(vector, model=embedding_model, k=k)


def search(text: str, **kwargs: object) -> list[Hit]:
    return asyncio.run(asearch(text, **kwargs))  # type: ignore[arg-type]
