"""The ledger protocol under a seeded scheduler of faults (see tests/simulation/world.py).

10,000 seeds by default (`RUNLEDGER_SIM_SEEDS` changes that; `make simulate
SEEDS=...` plays more, on every core). A failing seed is reported with the command
that replays it step by step.
"""

from __future__ import annotations

import os

import pytest

from tests.simulation.run import play_many
from tests.simulation.world import InvariantBroken, World

SEEDS = int(os.environ.get("RUNLEDGER_SIM_SEEDS", "10000"))


def test_ten_thousand_seeds_keep_every_invariant() -> None:
    outcomes, failures = play_many(0, SEEDS, processes=min(2, os.cpu_count() or 1))
    assert not failures, "\n".join(failures[:5])
    assert sum(outcomes.values()) == SEEDS


def test_a_seed_replays_exactly() -> None:
    first, second = World(7), World(7)
    first.run()
    second.run()
    assert first.ledger_log == second.ledger_log
    assert first.commands == second.commands


def test_a_broken_invariant_names_the_seed_and_the_replay_command() -> None:
    """The checker itself can fail: a ledger that lost a fact from its live view."""
    world = World(3)
    for _ in range(30):
        world.step(chaos=False)
    assert world.ledger.view is not None
    assert world.ledger_log
    world.ledger.view = world.ledger.view.__class__(flow_run_id=world.ledger.view.flow_run_id)
    with pytest.raises(InvariantBroken, match=r"replay: python -m tests.simulation.run --seed 3"):
        world.check.after_step()
