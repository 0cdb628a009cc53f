"""The settings of a run: what ``docingest ingest`` takes, checked before any work starts."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from docingest.chunk import validate_chunking
from docingest.discover import check_globs
from docingest.errors import ConfigError, SourceError
from docingest.execute import ClientSettings, resolve_credentials
from docingest.plan import CONTEXT_MODES, ContextMode

TRUE_VALUES = {"1", "true", "yes", "on", "y"}
FALSE_VALUES = {"", "0", "false", "no", "off", "n"}
REDACTED = "***"


def redact_url(url: str) -> str:
    """``url`` as it may be shown or recorded: the password of its userinfo (a lone user name too,
    which is how tokens ride in URLs), every query value and the fragment replaced by ``***``,
    e.g. ``http://user:***@127.0.0.1:8765/v1?api-key=***``. Requests use the URL itself."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed [ in the host: redact what looks like credentials
        return re.sub(r"(?<=//)[^/@]*@", f"{REDACTED}@", url.split("?", 1)[0].split("#", 1)[0])
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, sep, _password = userinfo.partition(":")
        netloc = f"{user}:{REDACTED}@{host}" if sep else f"{REDACTED}@{host}"
    query = "&".join(
        f"{item.split('=', 1)[0]}={REDACTED}" if "=" in item else REDACTED
        for item in parts.query.split("&")
        if item
    )
    fragment = REDACTED if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def redact_run(run: dict[str, Any]) -> dict[str, Any]:
    """A run record (``run_start``, a report's ``run``) with the base URL of its config redacted:
    ledgers and reports written before docingest redacted it keep it verbatim."""
    config = run.get("config")
    if isinstance(config, dict) and isinstance(config.get("base_url"), str):
        return {**run, "config": {**config, "base_url": redact_url(config["base_url"])}}
    return run


def env_dry_run(environ: Any = os.environ) -> bool:
    """``DRY_RUN=true`` (also ``1``, ``yes``, ``on``, ``y``, any case); unset, empty, ``false``,
    ``0``, ``no``, ``off`` or ``n`` is false. Anything else is refused: a typo must not start a
    run that sends (and bills) every request."""
    value = str(environ.get("DRY_RUN", "")).strip().lower()
    if value in TRUE_VALUES:
        return True
    if value in FALSE_VALUES:
        return False
    raise ConfigError(
        f"DRY_RUN={environ.get('DRY_RUN')!r} is neither true ({', '.join(sorted(TRUE_VALUES))}) nor false "
        f"({', '.join(sorted(v for v in FALSE_VALUES if v))}, or empty): set it to one of them"
    )


@dataclass(slots=True)
class IngestConfig:
    source: Path
    dry_run: bool = False
    report: Path | None = None
    ledger: Path | None = None
    db: Path = Path(".docingest/kb.sqlite")
    chat_model: str = "gpt-4o-mini"
    embedding_model: str = "text-embedding-3-small"
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    chunk_tokens: int = 512
    overlap_tokens: int = 0
    context: ContextMode = "section"
    loader: str = "smart"
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    max_file_bytes: int = 2_000_000
    summary_tokens: int = 128
    concurrency: int = 16
    max_retries: int = 4
    timeout: float = 60.0
    embedding_batch_size: int = 256
    rpm: int | None = None  # client-side pacing; the server's x-ratelimit-* headers are learnt too
    tpm: int | None = None
    max_tokens: int | None = None  # budget: prompt tokens sent + completion (max_tokens until billed)
    max_cost: float | None = None  # budget in USD, priced by docingest.cost
    price_file: Path | None = None  # prices overriding genai-prices: the report's and --max-cost's

    def validate(self) -> None:
        validate_chunking(self.chunk_tokens, self.overlap_tokens)
        if self.context not in CONTEXT_MODES:
            raise ConfigError(f"--context must be one of {', '.join(CONTEXT_MODES)} (got {self.context!r})")
        if self.loader not in ("smart", "raw"):
            raise ConfigError(f"--loader must be smart or raw (got {self.loader!r})")
        if self.concurrency < 1:
            raise ConfigError("--concurrency must be at least 1")
        if self.base_url is not None and not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"--base-url must be an http(s) URL such as http://127.0.0.1:8000/v1 (got "
                f"{redact_url(self.base_url)!r}; "
                "OPENAI_BASE_URL sets it too)"
            )
        if self.summary_tokens < 1:
            raise ConfigError(f"--summary-tokens must be at least 1 (got {self.summary_tokens})")
        if self.max_retries < 0:
            raise ConfigError(f"--max-retries cannot be negative (got {self.max_retries})")
        if not self.timeout > 0:
            raise ConfigError(f"--timeout must be more than 0 seconds (got {self.timeout})")
        if self.max_file_bytes < 1:
            raise ConfigError(f"--max-file-bytes must be at least 1 (got {self.max_file_bytes})")
        for flag, value in (("--rpm", self.rpm), ("--tpm", self.tpm), ("--max-tokens", self.max_tokens)):
            if value is not None and value < 1:
                raise ConfigError(f"{flag} must be at least 1 (got {value})")
        if self.max_cost is not None and not self.max_cost > 0:
            raise ConfigError(f"--max-cost must be more than 0 (got {self.max_cost})")
        if not 1 <= self.embedding_batch_size <= 2048:
            raise ConfigError("--embedding-batch must be between 1 and 2048 (the API's limit)")
        from docingest.report import is_report_file

        outputs = {"--report": self.report, "--ledger": self.ledger, "--db": self.db}
        check_outputs(outputs, {"--price-file": self.price_file}, replaceable={"--report": is_report_file})
        check_globs("--include", self.include)
        check_globs("--exclude", self.exclude)
        if self.price_file is not None:
            from docingest.cost import load_price_file

            load_price_file(self.price_file)  # refuses an unreadable file before any call, not after
        if not self.source.exists():
            raise SourceError(f"source {self.source} does not exist")
        if not self.source.is_dir():
            raise SourceError(f"source {self.source} is not a directory")
        self.client_settings()  # refuses a real run with no key and no base URL

    def client_settings(self) -> ClientSettings:
        settings = ClientSettings(
            chat_model=self.chat_model,
            embedding_model=self.embedding_model,
            base_url=self.base_url,
            api_key=self.api_key,
            dry_run=self.dry_run,
            concurrency=self.concurrency,
            max_retries=self.max_retries,
            timeout=self.timeout,
        )
        resolve_credentials(settings)
        return settings

    def public(self) -> dict[str, Any]:
        """The settings as they go into ledgers, reports and the knowledge base: never the API key,
        nor the secrets a base URL may carry (``redact_url``)."""
        data = asdict(self)
        data.pop("api_key", None)
        if self.base_url is not None:
            data["base_url"] = redact_url(self.base_url)
        return {
            k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
            for k, v in data.items()
        }


def default_report_path(run_id: str) -> Path:
    return Path(".docingest") / "runs" / f"{run_id}.json"


def ledger_path_for(report_path: Path) -> Path:
    name = report_path.name[: -len(".json")] if report_path.name.endswith(".json") else report_path.name
    return report_path.with_name(name + ".ledger.jsonl")


def check_outputs(
    outputs: Mapping[str, Path | None],
    inputs: Mapping[str, Path | Sequence[Path] | None] | None = None,
    *,
    replaceable: Mapping[str, Callable[[Path], bool]] | None = None,
) -> None:
    """Refuse, before any work, output paths (by flag) that would overwrite one another or an input
    (by flag), or a file that ``replaceable[flag]`` does not recognise as a previous output of its
    kind (an empty file may be replaced)."""
    given: dict[Path, str] = {}
    for flag, value in (inputs or {}).items():
        for read in [value] if isinstance(value, Path) else value or ():
            given.setdefault(read.resolve(), flag)
    taken: dict[Path, str] = {}
    for flag, path in outputs.items():
        if path is None:
            continue
        key = path.resolve()
        if key in taken:
            raise ConfigError(f"{taken[key]} and {flag} are the same file {path}: give each its own path")
        if key in given:
            raise ConfigError(f"{flag} {path} is also an input ({given[key]}): write it elsewhere")
        taken[key] = flag
        if path.is_dir():
            raise ConfigError(f"{flag} {path} is a directory: give the path of a file")
        recognise = (replaceable or {}).get(flag)
        if recognise is not None and path.is_file() and path.stat().st_size and not recognise(path):
            raise ConfigError(
                f"{flag} {path} exists and was not written by docingest: it replaces only its own "
                "reports; give another path, or remove the file"
            )
