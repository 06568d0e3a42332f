"""The chaos run, short: worker and ledger SIGKILLs and a broker freeze while maps run.

`scripts/chaos.py` starts its own Kafka broker, ledger and two workers; this runs it
with two small flows, a worker killed every 4 s, one ledger kill and a 5 s broker
freeze, and checks its verdict: every run finished, no body ran twice for one
attempt in a process that was not killed, no sequence gap, nothing stuck. The full
run and its figures are in docs/reliability.md.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.multiprocess, pytest.mark.slow]

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "chaos.py"


def test_a_short_chaos_run_loses_nothing_runs_nothing_twice_and_leaves_nothing_stuck() -> None:
    """Exit 0 and the report's three must-be-zero lines are zero."""
    done = subprocess.run(
        [
            sys.executable, str(SCRIPT), "--flows", "2", "--children", "100",
            "--worker-kill-every", "4", "--ledger-kills", "1", "--broker-freeze", "5",
            "--chaos-seconds", "16", "--deadline", "240",
        ],
        capture_output=True, text=True, timeout=420, check=False,
    )
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    assert "runs finished               2" in report
    assert "bodies run twice per attempt by live processes  0" in report
    assert "transitions lost (seq gaps) 0" in report
    assert "runs stuck                  0" in report
    assert "SIGKILL ledger" in report
    assert "froze the broker" in report
