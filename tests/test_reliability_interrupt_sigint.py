"""Ctrl-C (SIGINT) during every stage, through the real `dvc repro`: the checks of
test_reliability_interrupt.py, plus that an interrupted stage removes its own temporary files.

A stage turns KeyboardInterrupt into exit status 130 and the message `interrupted; outputs are
written atomically, so rerun `dvc repro` to finish`; DVC then reports the failed stage.
"""

import signal

import test_reliability_interrupt as killed
from test_reliability_interrupt import check_every_stage

archive, reference = killed.archive, killed.reference  # the same module-scoped fixtures


def test_every_stage_interrupted_by_ctrl_c_then_rerun_matches_an_uninterrupted_run(tmp_path, archive, reference):
    check_every_stage(tmp_path, archive, reference, signal.SIGINT)
