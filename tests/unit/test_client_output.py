from __future__ import annotations

import io

from aep.tools.client import Progress, percentile


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_on_a_terminal() -> None:
    terminal = FakeTerminal()
    progress = Progress(100, terminal, enabled=True)
    progress.update(sent=50, accepted=50)
    progress.update(sent=100, accepted=100)
    text = terminal.getvalue()
    assert "\r[" in text
    assert "100/100 events" in text
    assert text.endswith("\n")


def test_progress_is_plain_lines_otherwise() -> None:
    pipe = io.StringIO()
    progress = Progress(10, pipe, enabled=True)
    progress.update(sent=10, accepted=10)
    assert pipe.getvalue().startswith("progress: 10/10 events")
    assert "\r" not in pipe.getvalue()


def test_progress_can_be_silenced() -> None:
    pipe = io.StringIO()
    Progress(10, pipe, enabled=False).update(sent=10, accepted=10)
    assert pipe.getvalue() == ""


def test_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 51.0  # index round(49.5) = 50
    assert percentile(values, 0.99) == 99.0
    assert percentile([], 0.99) == 0.0


def test_progress_counts_what_was_accepted() -> None:
    pipe = io.StringIO()
    progress = Progress(10, pipe, enabled=True)
    progress.update(sent=10, accepted=7)
    assert pipe.getvalue().startswith("progress: 10/10 events sent, 7 accepted")


def test_progress_bar_counts_what_was_accepted() -> None:
    terminal = FakeTerminal()
    progress = Progress(10, terminal, enabled=True)
    progress.update(sent=10, accepted=0)
    assert "10/10 events sent, 0 accepted" in terminal.getvalue()
