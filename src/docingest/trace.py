"""``docingest trace -- python their_script.py``: record a script's OpenAI calls, unchanged.

The parent (:func:`trace_command`) writes the ``run_start`` record, then runs the command
with ``docingest/_trace_boot`` first on ``PYTHONPATH`` and the ledger's path in
``DOCINGEST_TRACE_LEDGER``. In the child (and in any Python process it starts), the boot's
``sitecustomize`` calls :func:`start_child_recording`, which puts an import hook on
``sys.meta_path``: when ``openai`` is imported, ``openai.OpenAI.__init__`` and
``openai.AsyncOpenAI.__init__`` are wrapped (:func:`docingest.instrument.install_openai_hook`)
so that every client records each HTTP attempt into the ledger, whoever built it (the script,
LangChain, LlamaIndex). The script's files are not touched; the boot then runs the
interpreter's own ``sitecustomize``, if there is one.

When the command ends, however it ends (exit 0, an exception, Ctrl-C, a kill), the parent
appends ``run_end`` with the status, rebuilds the statistics from the ledger and writes the
report. The command's exit code is returned.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import shlex
import signal
import subprocess
import sys
import threading
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from docingest.account import StatsCollector

BOOT_DIR = Path(__file__).with_name("_trace_boot")
ENV_LEDGER = "DOCINGEST_TRACE_LEDGER"
ENV_RUN_ID = "DOCINGEST_TRACE_RUN_ID"
ENV_DRY_RUN = "DOCINGEST_TRACE_DRY_RUN"


@dataclass(slots=True)
class TraceResult:
    exit_code: int
    status: str
    report: dict[str, Any]
    report_path: Path
    ledger_path: Path


def child_env(
    ledger: Path, run_id: str, *, dry_run: bool, environ: Mapping[str, str] = os.environ
) -> dict[str, str]:
    """The environment of the traced command: the boot directory first on ``PYTHONPATH``."""
    env = dict(environ)
    paths = [str(BOOT_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env[ENV_LEDGER] = str(ledger.resolve())
    env[ENV_RUN_ID] = run_id
    env[ENV_DRY_RUN] = "1" if dry_run else "0"
    return env


def _status(code: int) -> str:
    if code == 0:
        return "completed"
    if code in (130, -signal.SIGINT, 128 + signal.SIGINT, -signal.SIGTERM, 128 + signal.SIGTERM):
        return "interrupted"
    return "failed"


def trace_command(
    command: Sequence[str],
    *,
    dry_run: bool | None = None,
    report: Path | None = None,
    ledger: Path | None = None,
    html: Path | None = None,
    run_id: str | None = None,
    environ: Mapping[str, str] | None = None,
    on_start: Callable[[subprocess.Popen[bytes]], None] | None = None,
) -> TraceResult:
    """Run ``command`` with every OpenAI SDK client in it recorded; write the ledger and report.

    ``dry_run=None`` follows ``DRY_RUN``. The report (default ``.docingest/runs/<run>.json``)
    and ``html`` are written also when the command fails or is interrupted.
    """
    from docingest.config import default_report_path, env_dry_run, ledger_path_for
    from docingest.report import build_report, write_report

    if not command:
        from docingest.errors import ConfigError

        raise ConfigError("nothing to trace: give the command after --, e.g. docingest trace -- python x.py")
    base_env = os.environ if environ is None else environ
    dry = env_dry_run(base_env) if dry_run is None else dry_run
    stats = StatsCollector(None, run_id=run_id)
    report_path = report or default_report_path(stats.run_id)
    ledger_path = ledger or ledger_path_for(report_path)
    stats = StatsCollector(ledger_path, run_id=stats.run_id)
    stats.start(dry_run=dry, mode="trace", source=shlex.join(command), command=list(command))
    code = _run(command, child_env(ledger_path, stats.run_id, dry_run=dry, environ=base_env), on_start)
    status = _status(code)
    stats.finish(status)
    rebuilt = StatsCollector.from_ledger(ledger_path)
    result = build_report(rebuilt)
    result["run"]["exit_code"] = code
    write_report(result, report_path)
    if html is not None:
        from docingest.html import write_html

        write_html(result, html)
    return TraceResult(
        exit_code=code if code >= 0 else 128 - code,
        status=status,
        report=result,
        report_path=report_path,
        ledger_path=ledger_path,
    )


def _run(
    command: Sequence[str],
    env: dict[str, str],
    on_start: Callable[[subprocess.Popen[bytes]], None] | None,
) -> int:
    """Run the command to its end; SIGINT and SIGTERM sent to this process are passed on."""
    try:
        proc = subprocess.Popen(list(command), env=env)
    except OSError as exc:
        from docingest.errors import ConfigError

        raise ConfigError(f"cannot run {command[0]!r}: {exc.strerror or exc}") from exc
    restore: list[tuple[signal.Signals, Any]] = []
    if threading.current_thread() is threading.main_thread():

        def forward(signum: int, frame: types.FrameType | None) -> None:
            if proc.poll() is None:
                proc.send_signal(signum)

        for sig in (signal.SIGINT, signal.SIGTERM):
            restore.append((sig, signal.signal(sig, forward)))
    try:
        if on_start is not None:
            on_start(proc)
        return proc.wait()
    finally:
        for sig, handler in restore:
            signal.signal(sig, handler)
        if proc.poll() is None:  # on_start raised: do not leave the command behind
            proc.kill()
            proc.wait()


# -- the child side ------------------------------------------------------------------------------


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``then(module)`` right after the module ``name`` is first executed (one shot)."""

    def __init__(self, name: str, then: Callable[[types.ModuleType], None]) -> None:
        self.name = name
        self.then = then

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenLoader(spec.loader, self.then)
        return spec


class _ThenLoader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader, then: Callable[[types.ModuleType], None]) -> None:
        self._inner = inner
        self._then = then

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self._inner.exec_module(module)
        self._then(module)

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package, ...
        return getattr(self._inner, name)


def start_child_recording(environ: Mapping[str, str] = os.environ) -> StatsCollector | None:
    """In a traced process: record every OpenAI client into the ledger named by the
    environment. Called by the boot ``sitecustomize``; does nothing outside ``docingest trace``."""
    ledger = environ.get(ENV_LEDGER)
    if not ledger:
        return None
    stats = StatsCollector(Path(ledger), run_id=environ.get(ENV_RUN_ID))
    dry = environ.get(ENV_DRY_RUN) == "1"  # the parent decided, DRY_RUN included

    def hook(_module: types.ModuleType | None = None) -> None:
        from docingest.instrument import install_openai_hook  # only once openai is imported

        install_openai_hook(stats, dry_run=dry)

    if "openai" in sys.modules:
        hook()
    else:
        sys.meta_path.insert(0, _AfterImport("openai", hook))
    return stats
