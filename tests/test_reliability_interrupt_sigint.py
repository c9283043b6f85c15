"""Ctrl-C (SIGINT) during every stage, through the real `dvc repro`: the checks of
test_reliability_interrupt.py, plus that an interrupted stage removes its own temporary files.

A stage turns KeyboardInterrupt into exit status 130 and the message `interrupted; outputs are
written atomically, so rerun `dvc repro` to finish`; DVC then reports the failed stage.
"""
import signal

from test_reliability_interrupt import archive, check_every_stage, reference  # noqa: F401 (fixtures)


def test_every_stage_interrupted_by_ctrl_c_then_rerun_matches_an_uninterrupted_run(tmp_path, archive, reference):
    check_every_stage(tmp_path, archive, reference, signal.SIGINT)
