"""A base URL's secrets (userinfo password, query values) reach no output; requests use the URL as given."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import pytest
from rich.console import Console

from docingest.cli import main
from docingest.config import redact_url
from docingest.testing.openai_server import OpenAIServer

SECRETS = ("sk-URLSECRET111", "sk-QUERYSECRET222")

pytestmark = pytest.mark.usefixtures("no_openai_env")


def _docs(tmp_path: Path) -> Path:
    src = tmp_path / "docs"
    src.mkdir()
    (src / "guide.md").write_text("# Guide\n\nHow to configure the service.\n\n## Usage\n\nRun it.\n")
    return src


def _secret_url(base_url: str) -> str:
    return base_url.replace("http://", "http://user:sk-URLSECRET111@", 1) + "?api-key=sk-QUERYSECRET222"


def _assert_no_secret(*texts: str | bytes) -> None:
    for text in texts:
        data = text if isinstance(text, bytes) else text.encode()
        for secret in SECRETS:
            assert secret.encode() not in data


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "http://user:sk-URLSECRET111@127.0.0.1:8765/v1?api-key=sk-QUERYSECRET222",
            "http://user:***@127.0.0.1:8765/v1?api-key=***",
        ),
        ("https://sk-token@example.com/v1?a=1&flag#frag", "https://***@example.com/v1?a=***&***#***"),
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
        ("https://api.openai.com/v1", "https://api.openai.com/v1"),
    ],
)
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_a_real_run_records_the_base_url_without_its_secrets(tmp_path, capsys):
    src = _docs(tmp_path)
    out_dir = tmp_path / "out"
    buf = io.StringIO()
    with OpenAIServer() as server:
        url = _secret_url(server.base_url)
        argv = ["ingest", str(src), "--base-url", url, "--max-retries", "0"]
        argv += ["--report", str(out_dir / "r.json"), "--html", str(out_dir / "r.html")]
        code = main([*argv, "--db", str(out_dir / "kb.sqlite")], console=Console(file=buf, width=120))
        requests = list(server.requests)
    # the requests went to the server the URL names (its credentials make them 401s: no bearer key)
    assert len(requests) == 2 and all(r.path.startswith("/v1") for r in requests)
    assert code == 4
    shown = redact_url(url)
    assert shown == server.base_url.replace("http://", "http://user:***@", 1) + "?api-key=***"
    report = json.loads((out_dir / "r.json").read_text())
    assert report["run"]["config"]["base_url"] == shown
    ledger = (out_dir / "r.ledger.jsonl").read_text()
    run_start = json.loads(ledger.splitlines()[0])
    assert run_start["type"] == "run_start" and run_start["config"]["base_url"] == shown
    with sqlite3.connect(out_dir / "kb.sqlite") as db:
        (config,) = db.execute("SELECT config FROM runs").fetchone()
    assert json.loads(config)["base_url"] == shown
    files = sorted(p for p in out_dir.iterdir() if p.is_file())
    assert {p.name for p in files} >= {"r.json", "r.ledger.jsonl", "r.html", "kb.sqlite"}
    captured = capsys.readouterr()
    _assert_no_secret(*(p.read_bytes() for p in files), buf.getvalue(), captured.out, captured.err)


def test_a_dry_run_and_an_unreachable_api_show_the_base_url_without_its_secrets(tmp_path, capsys):
    src = _docs(tmp_path)
    url = _secret_url("http://127.0.0.1:9/v1")  # nothing listens on port 9: connection refused
    buf = io.StringIO()
    console = Console(file=buf, width=300)
    dry = ["ingest", str(src), "--dry-run", "--base-url", url, "--report", str(tmp_path / "dry.json")]
    # 4: the SDK puts its path after the URL's query, so the simulated API answers 404 to POST /v1/
    # as a real one would (a query in --base-url is not passed as the SDK's default_query yet)
    assert main(dry, console=console) == 4
    real = ["ingest", str(src), "--base-url", url, "--max-retries", "0", "--report", str(tmp_path / "r.json")]
    assert main([*real, "--db", str(tmp_path / "kb.sqlite")], console=console) == 4
    text = " ".join(buf.getvalue().split())
    assert "no request reached the API at http://user:***@127.0.0.1:9/v1?api-key=***: check" in text
    bad = [
        "ingest",
        str(src),
        "--dry-run",
        "--base-url",
        "ftp://user:sk-URLSECRET111@host/v1?k=sk-QUERYSECRET222",
    ]
    assert main(bad, console=console) == 2
    err = capsys.readouterr().err
    assert "--base-url must be an http(s) URL" in err and "ftp://user:***@host/v1?k=***" in err
    outputs = [p.read_bytes() for p in tmp_path.iterdir() if p.is_file()]
    assert len(outputs) >= 5  # two reports, two ledgers, the knowledge base
    _assert_no_secret(*outputs, buf.getvalue(), err)


def test_ledgers_and_reports_written_before_redaction_lose_their_secrets_when_read(tmp_path, capsys):
    src = _docs(tmp_path)
    buf = io.StringIO()
    console = Console(file=buf, width=200)
    report = tmp_path / "old.json"
    base = ["ingest", str(src), "--dry-run", "--base-url", "http://127.0.0.1:9/v1", "--report", str(report)]
    assert main(base, console=console) == 0
    url = _secret_url("http://127.0.0.1:9/v1")
    ledger = tmp_path / "old.ledger.jsonl"
    for path in (report, ledger):  # as an older docingest wrote them
        path.write_text(path.read_text().replace('"http://127.0.0.1:9/v1"', json.dumps(url)))
        assert SECRETS[0] in path.read_text()
    other = tmp_path / "other.json"
    report_cmd = [
        "report",
        str(ledger),
        "--report",
        str(tmp_path / "new.json"),
        "--html",
        str(tmp_path / "n.html"),
    ]
    assert main(report_cmd, console=console) == 0
    analyze = [
        "analyze",
        str(report),
        "--report",
        str(tmp_path / "a.json"),
        "--html",
        str(tmp_path / "a.html"),
    ]
    assert main(analyze, console=console) == 0
    assert main([*base[:-1], str(other), "--base-url", "http://127.0.0.1:8/v1"], console=console) == 0
    assert (
        main(["compare", str(report), str(other), "--json", str(tmp_path / "c.json")], console=console) == 0
    )
    shown = "http://user:***@127.0.0.1:9/v1?api-key=***"
    assert json.loads((tmp_path / "new.json").read_text())["run"]["config"]["base_url"] == shown
    assert json.loads((tmp_path / "a.json").read_text())["run"]["config"]["base_url"] == shown
    changes = json.loads((tmp_path / "c.json").read_text())["config_changes"]
    assert changes["base_url"] == [shown, "http://127.0.0.1:8/v1"]
    captured = capsys.readouterr()
    outputs = [p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and not p.name.startswith("old.")]
    assert len(outputs) >= 7
    _assert_no_secret(*outputs, buf.getvalue(), captured.out, captured.err)
