"""engine/progress.py: a bar on a terminal, nothing per step elsewhere (the pty test of the real
stage is tests/test_exp_table.py::test_progress_bar_on_a_terminal_and_plain_lines_elsewhere)."""

import io

import torch

from cifarlab.engine.progress import EpochBar, epoch_bar, wanted


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_the_bar_shows_steps_speed_and_running_loss_even_for_a_short_epoch():
    out = Terminal()
    bar = EpochBar(0, 3, 4, stream=out, interval=60.0)  # nothing between: only the last step draws
    for step in range(4):
        bar(step, 8, torch.tensor(float(step)))
    bar.close()
    text = out.getvalue()
    assert "epoch 1/3" in text and "4/4" in text and "img/s, loss" in text
    assert "loss 3.0000" in text  # the one reading, at the last step: the loss is synced rarely


def test_bars_only_on_a_terminal_unless_told(monkeypatch):
    monkeypatch.delenv("CIFARLAB_PROGRESS", raising=False)
    assert wanted(Terminal()) and not wanted(io.StringIO())
    monkeypatch.setenv("CIFARLAB_PROGRESS", "0")
    assert not wanted(Terminal())
    monkeypatch.setenv("CIFARLAB_PROGRESS", "1")
    assert wanted(io.StringIO())
    assert epoch_bar(0, 1, 5, show=False) is None
