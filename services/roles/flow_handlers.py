"""Flow state handlers in the ledger: where the Kafka shell decides flow-run transitions.

The ledger role decides every flow-run transition, so that is where a flow's
`state_handlers` run (the workers never see flow-run transitions). The flow is
the one the run was submitted with, loaded by its `FlowRef` exactly as for
planning (`services.roles.codeload.load_flow`: an allowlisted import path, or a
signed pickle), so a flow submitted by import path brings its handlers with it;
loaded flows are cached for the life of the process.

`FlowHandlers.decide_and_evolve` is the ledger's one hook. It decides as usual
and, only when the facts move a flow run whose flow has handlers, decides again
through `engine.flow_handlers.decide_with_flow_handlers` in a thread (user code
must not run on the event loop), each handler chain bounded by
`Settings.flow_handler_timeout_s`. A handler that raises, returns something
unusable or hangs fails the flow run with a message naming it; the ledger itself
never waits longer than the bound per transition.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from engine.flow import Flow
from engine.flow_handlers import decide_with_flow_handlers, verdict_for
from engine.orchestration import FlowRunView, decide_and_evolve
from engine.result_store import FSResultStore, ResultStore
from events import Command, Event, FlowRef, RunRequested
from services.roles.codeload import FlowLoadError, load_flow
from services.settings import Settings

__all__ = ["FlowHandlers"]

log = logging.getLogger(__name__)


class FlowHandlers:
    """Applies flows' state handlers to the flow-run transitions the ledger decides."""

    def __init__(self, settings: Settings, store: ResultStore | None = None) -> None:
        self.settings = settings
        self.store: ResultStore = store or FSResultStore(settings.result_store_url)
        self._flows: dict[FlowRef, Flow] = {}
        self._unloadable: set[FlowRef] = set()

    async def decide_and_evolve(
        self, view: FlowRunView, command: Command, now: datetime
    ) -> tuple[FlowRunView, list[Event]]:
        """`decide_and_evolve`, flow-run transitions passed through the flow's handlers."""
        decided, facts = decide_and_evolve(view, command, now)
        if decided.flow_seq == view.flow_seq:
            return decided, facts  # the flow run did not move (nearly every command)
        flow = await self._flow(decided.flow_ref or _ref_of(command))
        if flow is None or not flow.state_handlers:
            return decided, facts
        verdict = verdict_for(flow, self.settings.flow_handler_timeout_s)
        return await asyncio.to_thread(
            decide_with_flow_handlers, view, command, now, verdict, self.store
        )

    async def _flow(self, flow_ref: FlowRef | None) -> Flow | None:
        if flow_ref is None or flow_ref in self._unloadable:
            return None
        flow = self._flows.get(flow_ref)
        if flow is not None:
            return flow
        try:
            # Off the loop: the first load imports or unpickles user code.
            flow = self._flows[flow_ref] = await asyncio.to_thread(
                load_flow, flow_ref, self.settings
            )
            return flow
        except FlowLoadError as exc:
            # The run was planned elsewhere (the client sent the plan) and its code
            # cannot be loaded here: its transitions are recorded without handlers.
            log.warning("flow state handlers of %s not applied: %s", flow_ref, exc.reason)
            self._unloadable.add(flow_ref)
            return None


def _ref_of(command: Command) -> FlowRef | None:
    return command.flow_ref if isinstance(command, RunRequested) else None
