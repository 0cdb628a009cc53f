from __future__ import annotations

import io

from rich.console import Console

from docingest.account import StatsCollector
from docingest.console import ProgressView
from docingest.pipeline import Progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_plain_progress_lines_come_at_the_interval():  # one line per update, even narrow
    buf = io.StringIO()
    clock = FakeClock()
    stats = StatsCollector(None)
    progress = Progress(files_total=10, files_done=3, chunks=42, calls_planned=50, calls_done=7)
    with ProgressView(Console(file=buf, width=40), get_time=clock, interval=5.0) as view:
        view.update(progress, stats)
        assert buf.getvalue() == ""  # not yet: less than the interval has passed
        clock.now = 5.0
        view.update(progress, stats)
        clock.now = 6.0
        view.update(progress, stats)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("files 3/10  chunks 42  calls 7/50  tokens sent 0")


def test_terminal_progress_bar_shows_files_and_calls():
    buf = io.StringIO()
    clock = FakeClock()
    stats = StatsCollector(None)
    console = Console(file=buf, width=160, force_terminal=True, color_system=None)
    progress = Progress(files_total=4, files_done=2, chunks=9, calls_planned=12, calls_done=5)
    with ProgressView(console, get_time=clock) as view:
        view.update(progress, stats)
        assert view.bar is not None
        tasks = {t.description: t for t in view.bar.tasks}
    assert (tasks["files"].completed, tasks["files"].total) == (2, 4)
    assert (tasks["calls"].completed, tasks["calls"].total) == (5, 12)
    assert "9 chunks" in tasks["files"].fields["extra"]
