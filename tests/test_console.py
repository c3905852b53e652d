"""Progress output: a bar on a terminal, a periodic one-line status in a log file."""

import io
import logging

from unet_patches import console


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_file_gets_status_lines_not_a_redrawn_bar(caplog, monkeypatch):
    log_file = io.StringIO()
    clock = iter([0.0, 1.0, 40.0, 41.0, 90.0])
    monkeypatch.setattr(console.time, "monotonic", lambda: next(clock))
    bar = console.progress(200, "epoch 1/20", "step", stream=log_file)
    assert isinstance(bar, console.StatusLine)
    with caplog.at_level(logging.INFO, logger="unet_patches"):
        bar.set_postfix(loss="0.1234")
        for _ in range(4):  # at 1 s, 40 s, 41 s and 90 s
            bar.update(10)
        bar.close()
    lines = [record.getMessage() for record in caplog.records]
    assert lines == ["epoch 1/20: 20/200 step, loss 0.1234", "epoch 1/20: 40/200 step, loss 0.1234"]
    assert log_file.getvalue() == ""  # nothing drawn into the stream itself


def test_a_terminal_gets_a_bar_and_disabled_means_silent():
    terminal = Terminal()
    bar = console.progress(5, "predict", "image", stream=terminal)
    bar.update(5)
    bar.close()
    assert "predict" in terminal.getvalue()
    quiet = Terminal()
    silent = console.progress(5, "predict", "image", enabled=False, stream=quiet)
    silent.update(5)
    silent.close()
    assert quiet.getvalue() == ""
