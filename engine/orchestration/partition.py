"""What the ledger holds for one ledger partition, and the fold that rebuilds it.

`PartitionState` is the views of the partition's live flow runs, the retired
form of its finished ones (`engine.orchestration.retired`) and a bounded window
of the commands it processed last (`RecentCommands`). `fold_into` builds it from
the partition's facts in ledger order; the ledger role keeps the same state up
to date as it decides (`PartitionState.keep`), and a snapshot is this state at
an offset, so "snapshot + the facts after it" folds to what the facts from
offset 0 fold to.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from engine.orchestration.evolve import evolve
from engine.orchestration.retired import RetiredRun, is_retirable, retire
from engine.orchestration.view import FlowRunView
from events import Event

__all__ = ["PartitionState", "RecentCommands", "command_key"]


def command_key(flow_run_id: str, command_id: str) -> int:
    """A 64-bit key for one (flow run, command): the window holds these, not strings."""
    digest = hashlib.blake2b(f"{flow_run_id}\x00{command_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class RecentCommands:
    """The last `capacity` distinct commands whose facts a partition holds, oldest first.

    A retired run keeps no command ids of its own; a repeated command for it is
    recognised (and ignored, as its full view would ignore it) while it is in
    this window. Beyond it, the repeat is refused as a command for a finished
    run. The window is counted in commands, in ledger order, so it is the same
    whether the state was folded from offset 0, from a snapshot, or kept live.
    """

    __slots__ = ("_keys", "_last", "_order", "capacity")

    def __init__(self, capacity: int, keys: Iterable[int] = ()) -> None:
        if capacity < 1:
            raise ValueError("the command window holds at least one command")
        self.capacity = capacity
        self._order: deque[int] = deque()
        self._keys: set[int] = set()
        self._last: tuple[str, str] | None = None
        """(flow run, command) noted last: a command's facts follow each other, so
        most facts are recognised here without hashing."""
        for key in keys:
            self._add(key)

    def note(self, flow_run_id: str, command_id: str) -> None:
        """Record that a fact answering `command_id` of `flow_run_id` was folded."""
        pair = (flow_run_id, command_id)
        if pair == self._last:
            return
        self._last = pair
        self._add(command_key(flow_run_id, command_id))

    def _add(self, key: int) -> None:
        if key in self._keys:
            return
        self._order.append(key)
        self._keys.add(key)
        if len(self._order) > self.capacity:
            self._keys.discard(self._order.popleft())

    def __contains__(self, pair: object) -> bool:
        if not isinstance(pair, tuple) or len(pair) != 2:
            return False
        return command_key(pair[0], pair[1]) in self._keys

    def keys(self) -> list[int]:
        """The window's keys, oldest first (what a snapshot stores)."""
        return list(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RecentCommands):
            return NotImplemented
        return self.capacity == other.capacity and self._order == other._order

    def __repr__(self) -> str:
        return f"RecentCommands({len(self._order)}/{self.capacity})"


@dataclass(eq=True)
class PartitionState:
    """The live views, retired runs and recent commands of one ledger partition."""

    window: int
    views: dict[str, FlowRunView] = field(default_factory=dict)
    retired: dict[str, RetiredRun] = field(default_factory=dict)
    recent: RecentCommands = field(init=False)
    pending: tuple[str, str | None] | None = None
    """(flow run, command) of the last fact folded, whose command may have more facts.

    A run retires only once a command is complete: a command's first facts can
    finish a flow run that its later facts give task runs again (a flow state
    handler failing the run as it starts). The ledger keeps state at command
    boundaries; a fold decides a retirement when the next command's facts begin
    (or at `settle`)."""

    def __post_init__(self) -> None:
        self.recent = RecentCommands(self.window)

    def fold(self, event: Event) -> None:
        """Fold one fact of this partition (in ledger order)."""
        flow_run_id = event.flow_run_id
        command_id = event.cause.command_id
        pair = (flow_run_id, command_id)
        if self.pending is not None and (self.pending != pair or command_id is None):
            self.settle()
        if command_id is not None:
            self.recent.note(flow_run_id, command_id)
        if flow_run_id in self.retired:
            # Only refusals (or duplicates of old facts) follow a retirement: decide
            # answers a retired run with nothing else, and they change no state.
            return
        view = self.views.get(flow_run_id) or FlowRunView(flow_run_id=flow_run_id)
        self.views[flow_run_id] = evolve(view, event)
        self.pending = pair

    def settle(self) -> None:
        """The last command folded is complete: retire its run if it has come to rest."""
        if self.pending is not None:
            view = self.views.get(self.pending[0])
            self.pending = None
            if view is not None:
                self._keep(view)

    def keep(self, view: FlowRunView, facts: Iterable[Event]) -> None:
        """What the ledger does after deciding: the same as folding `facts` one by one.

        `view` is the view with `facts` folded in (decide's answer); a retired run's
        stand-in is never kept, since its facts are refusals that change nothing.
        """
        flow_run_id = view.flow_run_id
        for fact in facts:
            command_id = fact.cause.command_id
            if command_id is not None:
                self.recent.note(flow_run_id, command_id)
        self.settle()
        if flow_run_id not in self.retired:
            self._keep(view)

    def _keep(self, view: FlowRunView) -> None:
        if is_retirable(view):
            retired = retire(view)
            assert retired is not None
            self.retired[view.flow_run_id] = retired
            self.views.pop(view.flow_run_id, None)
        else:
            self.views[view.flow_run_id] = view

    def view_for(self, flow_run_id: str, command_id: str) -> FlowRunView | None:
        """The view `decide` answers `command_id` for `flow_run_id` with (None: no such run)."""
        view = self.views.get(flow_run_id)
        if view is not None:
            return view
        retired = self.retired.get(flow_run_id)
        if retired is None:
            return None
        seen = (flow_run_id, command_id) in self.recent
        return retired.as_view((command_id,) if seen else ())


def fold_into(
    state: PartitionState, events: Iterable[Event], *, complete: bool = True
) -> PartitionState:
    """Fold `events` (one partition's facts, in ledger order) into `state`; returns it.

    `complete`: the last command's facts are all there (a read to a partition's
    end, where a command's facts never break off), so `settle` it.
    """
    for event in events:
        state.fold(event)
    if complete:
        state.settle()
    return state
