"""The TaskRunner: Prefect 1's pipeline for one task run, step by step.

Every step takes the current state and returns the next one; a step that must
stop the run raises ENDRUN. Every change a step makes is announced to the state
handlers exactly once (`handle_state_change`) and then handed to the runner's
`recorder` -- the hook through which the shells turn changes into ledger
proposals. Changes Prefect makes silently (loop restarts, crash fallbacks) skip
the handlers but are still recorded: nothing changes state off the record.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple, TypeVar

from engine import signals
from engine.cache_validators import call_validator, tokenize
from engine.clock import Clock, SystemClock
from engine.context import bind_live, unbind
from engine.edges import Edge
from engine.orchestration.rules import allowed
from engine.results import Result, ResultNotImplementedError
from engine.state import (
    Cached,
    Failed,
    Looped,
    Mapped,
    Paused,
    Pending,
    Resume,
    Retrying,
    Running,
    Scheduled,
    Skipped,
    State,
    Success,
    TimedOut,
    TriggerFailed,
    _MetaState,
)
from engine.task import Task
from engine.timeouts import run_with_timeout

Recorder = Callable[[State], None]
STARTING_MESSAGE = "Starting task run."
"""The message of the Running a claim is (set_task_to_running's only outcome)."""
_SKIPPABLE_STEPS = frozenset(
    {
        "check_task_is_ready",
        "check_task_reached_start_time",
        "check_upstream_finished",
        "check_upstream_skipped",
        "set_task_to_running",
        "cache_result",
        "check_for_retry",
    }
)
"""Steps `_pipeline` skips (or inlines) where they could not change the state."""
StepMethod = TypeVar("StepMethod", bound=Callable[..., State])


def handler_name(handler: Callable[..., Any] | None) -> str:
    """`module:qualname` of a state handler: what messages name it by."""
    if handler is None:
        return "?"
    module = getattr(handler, "__module__", None) or "?"
    qualname = getattr(handler, "__qualname__", None) or repr(handler)
    return f"{module}:{qualname}"


class TaskRunnerInitializeResult(NamedTuple):
    """What `initialize_run` hands to the pipeline."""

    state: State
    context: dict[str, Any]


def call_state_handlers(method: StepMethod) -> StepMethod:
    """Wrap a pipeline step: trap signals and errors, announce changes once."""

    @functools.wraps(method)
    def step(self: TaskRunner, state: State, *args: Any, **kwargs: Any) -> State:
        end_run = False
        try:
            new_state = method(self, state, *args, **kwargs)
        except signals.ENDRUN as exc:
            end_run, new_state = True, exc.state
        except signals.PrefectStateSignal as exc:
            new_state = self._state_from_signal(exc)
        except Exception as exc:
            if self.context.get("raise_on_exception"):
                raise
            new_state = Failed(f"Unexpected error: {exc!r}", result=exc)
        if new_state is not state:
            new_state = self.handle_state_change(state, new_state)
        if end_run:
            raise signals.ENDRUN(new_state)
        return new_state

    return step  # type: ignore[return-value]


class TaskRunner:
    """Runs one task from a starting state to its next resting state."""

    def __init__(
        self,
        task: Task,
        state_handlers: Iterable[Callable[..., Any]] | None = None,
        flow_result: Result | None = None,
        *,
        clock: Clock | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        self.task = task
        self.state_handlers = list(state_handlers or ())
        self.flow_result = flow_result
        self.clock: Clock = clock or SystemClock()
        self.recorder = recorder
        self.context: dict[str, Any] = {}
        self.result: Result = self._task_result()
        self._last_recorded: State | None = None
        self._handler: Callable[..., Any] | None = None
        """The state handler being called (named when it fails)."""

    _stock_steps: bool = True
    """True while the class runs TaskRunner's own steps (a subclass may override them)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._stock_steps = False

    def __repr__(self) -> str:
        return f"<TaskRunner: {self.task.name}>"

    def _task_result(self) -> Result:
        if self.task.result is not None:
            return self.task.result
        if self.flow_result is not None:
            return self.flow_result
        return Result()

    # ----- announcing and recording changes ----------------------------------------

    def _record(self, state: State) -> None:
        if state is self._last_recorded:
            return
        self._last_recorded = state
        if self.recorder is not None:
            self.recorder(state)

    def call_runner_target_handlers(self, old_state: State, new_state: State) -> State:
        """Call the task's own handlers `h(task, old, new)` in order."""
        for handler in self.task.state_handlers:
            self._handler = handler
            new_state = handler(self.task, old_state, new_state) or new_state
        return new_state

    def handle_state_change(self, old_state: State, new_state: State) -> State:
        """Run the handler chain on one change, then record the outcome."""
        proposed = new_state
        self._handler = None
        try:
            new_state = self.call_runner_target_handlers(old_state, new_state)
            for handler in self.state_handlers:
                self._handler = handler
                new_state = handler(self, old_state, new_state) or new_state
            if new_state is not proposed:
                self._check_rewrite(old_state, proposed, new_state)
        except (signals.ENDRUN, signals.PAUSE):
            raise
        except signals.PrefectStateSignal as exc:
            new_state = self._state_from_signal(exc)
        except Exception as exc:
            if self.context.get("raise_on_exception"):
                raise
            # Prefect's message, then whose code failed (a deliberate addition: in the
            # services the run ends far from the code, tests/golden/README.md).
            message = f"Unexpected error while calling state handlers: {exc!r}"
            named = None
            if self._handler is not None:
                name = handler_name(self._handler)
                message += f" (state handler {name})"
                named = {"state_handler": name}
            raise signals.ENDRUN(Failed(message, result=exc, context=named)) from exc
        self._record(new_state)
        return new_state

    def _check_rewrite(self, old: State, proposed: State, new: Any) -> None:
        """Refuse a handler's state the run could not go on from (it would never finish).

        Prefect takes any return value; a non-State breaks its pipeline later, and a
        run sent back to Pending or Running would wait for ever in the ledger. A
        handler may keep the proposed state's class, finish the run, or schedule it.
        """
        name = handler_name(self._handler)
        if not isinstance(new, State):
            raise TypeError(f"state handler {name} returned {new!r}, which is not a State")
        old_type, new_type = type(old).__name__, type(new).__name__
        keeps_going = (
            type(new) is type(proposed) or new.is_finished() or isinstance(new, Scheduled)
        )
        if not keeps_going or not allowed(old_type, new_type, mid_run=True):
            raise TypeError(
                f"state handler {name} turned {old_type} -> {type(proposed).__name__} into "
                f"{new_type}, which the run cannot go on from"
            )

    def _state_from_signal(self, exc: signals.PrefectStateSignal) -> State:
        """The signal's state, completed with what only the runner knows."""
        state = exc.state
        if isinstance(state, Retrying):
            return state.copy_with(
                start_time=state.start_time or self.clock(),
                run_count=self.context.get("task_run_count", 1),
                context={**state.context, "task_run_count": self.context.get("task_run_count", 1)},
            )
        if isinstance(state, Looped):
            count = self.context.get("task_loop_count", 1)
            return state.copy_with(
                loop_count=count, message=state.message or f"Task is looping ({count})"
            )
        return state

    # ----- preparation ---------------------------------------------------------------

    def initialize_run(
        self, state: State | None, context: dict[str, Any]
    ) -> TaskRunnerInitializeResult:
        """Unwrap meta states and derive run count, resume and loop context."""
        state = Pending() if state is None else state
        while isinstance(state, _MetaState):
            inner = state.state
            state = inner if inner is not None else Pending()
        if isinstance(state, Retrying):
            context["task_run_count"] = state.run_count + 1
        else:
            context["task_run_count"] = state.context.get("task_run_count", 1)
        if isinstance(state, Resume) or (
            isinstance(state, Paused)
            and state.start_time is not None
            and state.start_time <= self.clock()
        ):
            context["resume"] = True
        if "_loop_count" in state.context:
            context["task_loop_count"] = state.context["_loop_count"]
            context["task_loop_result"] = state.result
        context.setdefault("checkpointing", False)
        context["task_name"] = self.task.name
        context["task_tags"] = sorted(self.task.tags)
        map_index = context.get("map_index")
        context["task_full_name"] = (
            self.task.name if map_index is None else f"{self.task.name}[{map_index}]"
        )
        if self.task.target is not None:
            target = self.task.target
            self.result = self.result.copy_with(
                location=target if isinstance(target, str) else None
            )
        return TaskRunnerInitializeResult(state=state, context=context)

    # ----- the run -------------------------------------------------------------------

    def run(
        self,
        state: State | None = None,
        upstream_states: Mapping[Edge, State] | None = None,
        context: Mapping[str, Any] | None = None,
        is_mapped_parent: bool = False,
    ) -> State:
        """Run the pipeline and return the run's final state."""
        upstream_states = dict(upstream_states or {})
        run_context = dict(context or {})
        self._last_recorded = state
        while True:
            final, loop_again = self._run_once(
                state, upstream_states, run_context, is_mapped_parent
            )
            if not loop_again:
                break
            state = final
        if not final.is_meta_state():
            self._record(final)
        return final

    def _run_once(
        self,
        state: State | None,
        upstream_states: dict[Edge, State],
        context: dict[str, Any],
        is_mapped_parent: bool,
    ) -> tuple[State, bool]:
        self.context = context
        # Triggers and handlers read the task context too (manual_only reads `resume`).
        token = bind_live(context)
        try:
            return self._pipeline(state, upstream_states, is_mapped_parent)
        finally:
            unbind(token)

    def _pipeline(
        self, state: State | None, upstream_states: dict[Edge, State], is_mapped_parent: bool
    ) -> tuple[State, bool]:
        # A step that would hand `state` back unchanged announces nothing: on the
        # common path (the stock steps, see _stock_steps) such steps are skipped.
        # Each guard below is exactly that step's no-change case, and the pure
        # checks fall back to the step itself should they raise.
        task = self.task
        stock = type(self)._stock_steps and self.__dict__.keys().isdisjoint(_SKIPPABLE_STEPS)
        try:
            state, self.context = self.initialize_run(state, self.context)
            if not (stock and isinstance(state, Pending)):
                state = self.check_task_is_ready(state)
            if not (stock and type(state) is Pending):
                state = self.check_task_reached_start_time(state)
            checked = self._upstream_checks(upstream_states) if stock else None
            if checked is None:
                state = self.check_upstream_finished(state, upstream_states)
                state = self.check_upstream_skipped(state, upstream_states)
            else:
                finished, skipped = checked
                if not finished:
                    return state, False  # the step's ENDRUN(state): unchanged, nothing announced
                if skipped:
                    state = self.check_upstream_skipped(state, upstream_states)
            state, upstream_states = self.load_results(state, upstream_states)
            inputs = self.get_task_inputs(state, upstream_states)
            if is_mapped_parent:
                state = self.check_task_ready_to_map(state, upstream_states)
            self.set_task_run_name(inputs)
            if task.target is not None:
                state = self.check_target(state, inputs)
            elif task.cache_for is not None or state.is_cached():
                state = self.check_task_is_cached(state, inputs)
            # else: the cache check could only return `state` unchanged (no announcement)
            state = self.check_task_trigger(state, upstream_states)
            if stock and state.is_pending():
                # set_task_to_running's only outcome from a pending state, announced
                # exactly as its wrapper would.
                state = self.handle_state_change(state, Running(message=STARTING_MESSAGE))
            else:
                state = self.set_task_to_running(state, inputs)
            state = self.get_task_run_state(state, inputs)
            if not (stock and task.cache_for is None):
                state = self.cache_result(state, inputs)
            if not (stock and not state.is_failed()):
                state = self.check_for_retry(state, inputs)
            if isinstance(state, Looped):
                return self.check_task_is_looping(
                    state, inputs, upstream_states, self.context
                ), True
            return state, False
        except signals.ENDRUN as exc:
            return exc.state, False
        except signals.PrefectStateSignal as exc:
            return self._state_from_signal(exc), False
        except Exception as exc:
            if self.context.get("raise_on_exception"):
                raise
            name = self.context.get("task_full_name", self.task.name)
            return Failed(
                f"Task '{name}': Unexpected error while running task: {exc!r}", result=exc
            ), False

    def _upstream_checks(self, upstream_states: Mapping[Edge, State]) -> tuple[bool, bool] | None:
        """The tests of check_upstream_finished and check_upstream_skipped, in one pass.

        (all upstreams finished, the skip step would skip); None if a test raised
        (the steps themselves then run and report it).
        """
        try:
            states = self._upstream_set(upstream_states, True)
            finished = all(s.is_finished() for s in states)
            skipped = self.task.skip_on_upstream_skip and any(s.is_skipped() for s in states)
        except Exception:
            return None
        return finished, skipped

    # ----- the steps, in pipeline order ----------------------------------------------------

    @call_state_handlers
    def check_task_is_ready(self, state: State) -> State:
        """Continue only from Pending (incl. Scheduled kinds), Mapped or Cached."""
        if state.is_pending() or state.is_mapped() or state.is_cached():
            return state
        raise signals.ENDRUN(state)

    @call_state_handlers
    def check_task_reached_start_time(self, state: State) -> State:
        """Stop when a Scheduled state's start time has not come (or never will)."""
        if isinstance(state, Paused) and state.start_time is None:
            raise signals.ENDRUN(state)
        start = getattr(state, "start_time", None) if state.is_scheduled() else None
        if start is not None and start > (self.clock()):
            raise signals.ENDRUN(state)
        return state

    @staticmethod
    def _upstream_set(upstream_states: Mapping[Edge, State], expand_mapped: bool) -> list[State]:
        states: list[State] = []
        for edge, upstream in upstream_states.items():
            if expand_mapped and not edge.mapped and upstream.is_mapped():
                states.extend(s for s in upstream.map_states if s is not None)  # type: ignore[attr-defined]
            else:
                states.append(upstream)
        return states

    @call_state_handlers
    def check_upstream_finished(self, state: State, upstream_states: Mapping[Edge, State]) -> State:
        """Stay put (silently) while any upstream is unfinished."""
        if not all(s.is_finished() for s in self._upstream_set(upstream_states, True)):
            raise signals.ENDRUN(state)
        return state

    @call_state_handlers
    def check_upstream_skipped(self, state: State, upstream_states: Mapping[Edge, State]) -> State:
        """Skip when an upstream skipped, unless the task opted out."""
        if self.task.skip_on_upstream_skip and any(
            s.is_skipped() for s in self._upstream_set(upstream_states, True)
        ):
            raise signals.ENDRUN(
                Skipped(
                    message=(
                        "Upstream task was skipped; if this was not the intended behavior, "
                        "consider changing `skip_on_upstream_skip=False` for this task."
                    )
                )
            )
        return state

    def load_results(
        self, state: State, upstream_states: dict[Edge, State]
    ) -> tuple[State, dict[Edge, State]]:
        """Results arrive hydrated from the shell; kept as Prefect's hook."""
        return state, upstream_states

    def get_task_inputs(
        self, state: State, upstream_states: Mapping[Edge, State]
    ) -> dict[str, Result]:
        """`{argument: Result}` from data edges and flow constants."""
        constants = self.context.get("constants")
        inputs: dict[str, Result] = (
            {key: Result(value=value) for key, value in constants.items()} if constants else {}
        )
        for edge, upstream in upstream_states.items():
            if edge.key is not None:
                inputs[edge.key] = upstream._result
        return inputs

    @call_state_handlers
    def check_task_ready_to_map(self, state: State, upstream_states: Mapping[Edge, State]) -> State:
        """A mapped parent never runs its body: it becomes Mapped (or fails) here."""
        if state.is_mapped():
            raise signals.ENDRUN(state)
        mapped_edges = {e: s for e, s in upstream_states.items() if e.mapped}
        if upstream_states and not any(s.is_successful() for s in mapped_edges.values()):
            raise signals.ENDRUN(Failed("No upstream states can be mapped over."))
        for upstream in mapped_edges.values():
            if (
                upstream.is_successful()
                and not upstream.is_mapped()
                and not hasattr(upstream.result, "__getitem__")
            ):
                raise signals.ENDRUN(
                    Failed("At least one upstream state has an unmappable result.")
                )
        counts = [
            upstream.n_map_states if isinstance(upstream, Mapped) else len(upstream.result)
            for upstream in mapped_edges.values()
            if upstream.is_mapped() or upstream.is_successful()
        ]
        n = min(counts, default=0)
        raise signals.ENDRUN(Mapped("Ready to proceed with mapping.", n_map_states=n))

    def set_task_run_name(self, task_inputs: Mapping[str, Result]) -> None:
        """Format `task_run_name` with the inputs and context."""
        name = self.task.task_run_name
        if name is None:
            return
        values = {k: r.value for k, r in task_inputs.items()}
        fields = {**self.context, **values}
        self.context["task_run_name"] = name(**fields) if callable(name) else name.format(**fields)

    def _format_kwargs(self, inputs: Mapping[str, Result]) -> dict[str, Any]:
        return {
            **(self.context.get("parameters") or {}),
            **self.context,
            **{k: r.value for k, r in inputs.items()},
        }

    def _hashed_inputs(self, inputs: Mapping[str, Result]) -> dict[str, str]:
        return {key: tokenize(r.value) for key, r in inputs.items()}

    @call_state_handlers
    def check_target(self, state: State, inputs: Mapping[str, Result]) -> State:
        """Reuse a result already present at the task's target."""
        if state.is_cached():
            return state
        target = self.task.target
        location = (
            target(**self._format_kwargs(inputs))
            if callable(target)
            else (str(target).format(**self._format_kwargs(inputs)))
        )
        if not self.result.exists(location):
            return state
        found = self.result.read(location)
        return Cached(
            message=f"Result found at task target {location}",
            result=found,
            hashed_inputs=self._hashed_inputs(inputs),
            cached_result_expiration=None,
            cached_parameters=dict(self.context.get("parameters") or {}),
        )

    @call_state_handlers
    def check_task_is_cached(self, state: State, inputs: Mapping[str, Result]) -> State:
        """Reuse a valid cached result (from the starting state or the cache store)."""
        now = self.clock()
        parameters = self.context.get("parameters") or {}
        validator = self.task.cache_validator
        values = {key: result.value for key, result in inputs.items()}  # as Prefect passes them
        if state.is_cached():
            if call_validator(validator, state, values, parameters, now):
                return state
            state = Pending("Cache was invalid; ready to run.")
        if self.task.cache_for is not None:
            caches: Mapping[str, list[State]] = self.context.get("caches") or {}
            for candidate in caches.get(self.task.cache_key or self.task.name, []):
                if call_validator(validator, candidate, values, parameters, now):
                    return candidate
        return state

    @call_state_handlers
    def check_task_trigger(self, state: State, upstream_states: Mapping[Edge, State]) -> State:
        """Ask the trigger whether the upstream states allow this run."""
        try:
            if not self.task.trigger(upstream_states):
                raise signals.TRIGGERFAIL(message="Trigger failed")
        except signals.PrefectStateSignal as exc:
            raise signals.ENDRUN(self._state_from_signal(exc)) from exc
        except (signals.ENDRUN, signals.PrefectSignal):
            raise
        except Exception as exc:
            raise signals.ENDRUN(
                TriggerFailed(f"Unexpected error while checking task trigger: {exc!r}", result=exc)
            ) from exc
        return state

    @call_state_handlers
    def set_task_to_running(self, state: State, inputs: Mapping[str, Result]) -> State:
        """Claim the run: Pending becomes Running; anything else ends here."""
        if not state.is_pending():
            raise signals.ENDRUN(state)
        return Running(message=STARTING_MESSAGE)

    @call_state_handlers
    def get_task_run_state(self, state: State, inputs: Mapping[str, Result]) -> State:
        """Run the body and turn what it returns or raises into a state."""
        if not state.is_running():
            raise signals.ENDRUN(state)
        kwargs = {key: r.value for key, r in inputs.items()}
        try:
            # The task context is bound for the whole run (see _run_once).
            value = run_with_timeout(self.task.run, kwargs, self.task.timeout)
        except signals.TaskTimeoutSignal as exc:
            return TimedOut("Task timed out during execution.", result=exc)
        except signals.LOOP as exc:
            looped = self._state_from_signal(exc)
            return looped.copy_with(result=self._store(looped.result, inputs))
        except signals.SUCCESS as exc:
            success = exc.state
            return success.copy_with(result=self._store(success.result, inputs))
        except signals.ENDRUN:
            raise
        except signals.PrefectSignal:
            raise
        except Exception as exc:
            if self.context.get("raise_on_exception"):
                raise
            return Failed(f"Error during execution of task: {exc!r}", result=exc)
        return Success(message="Task run succeeded.", result=self._store(value, inputs))

    def _store(self, value: Any, inputs: Mapping[str, Result]) -> Result:
        """Checkpoint the value when allowed; otherwise keep it in memory."""
        if (
            self.context.get("checkpointing")
            and self.task.checkpoint is not False
            and value is not None
        ):
            try:
                return self.result.write(value, **self._format_kwargs(inputs))
            except ResultNotImplementedError:
                pass
        result = self.result
        if type(result) is Result:
            # The usual in-memory Result: built directly (copy_with's generic slot loop
            # would carry over exactly these fields).
            return Result(
                value, result.location, result.serializer, hash=result.hash, size=result.size
            )
        return result.copy_with(value=value)

    @call_state_handlers
    def cache_result(self, state: State, inputs: Mapping[str, Result]) -> State:
        """Turn a fresh success into Cached when the task caches."""
        if state.is_successful() and not state.is_skipped() and self.task.cache_for is not None:
            now = self.clock()
            return Cached(
                message=state.message,
                result=state._result,
                hashed_inputs=self._hashed_inputs(inputs),
                cached_result_expiration=now + self.task.cache_for,
                cached_parameters=dict(self.context.get("parameters") or {}),
            )
        return state

    @call_state_handlers
    def check_for_retry(self, state: State, inputs: Mapping[str, Result]) -> State:
        """Schedule another attempt for a failure while the budget allows."""
        if not state.is_failed():
            return state
        retry_on = self.task.retry_on
        if (
            retry_on is not None
            and state.result is not None
            and not isinstance(state.result, retry_on)
        ):
            return state
        run_count = self.context.get("task_run_count", 1)
        if run_count > self.task.max_retries:
            return state
        now = self.clock()
        delay = self.task.retry_delay
        context: dict[str, Any] = {"task_run_count": run_count}
        result: Any = None
        if "task_loop_count" in self.context:
            context["_loop_count"] = self.context["task_loop_count"]
            result = self.context.get("task_loop_result")
        return Retrying(
            message=f"Retrying Task (after attempt {run_count} of {self.task.max_retries + 1})",
            start_time=now + delay if delay is not None else now,
            run_count=run_count,
            context=context,
            result=result,
        )

    def check_task_is_looping(
        self,
        state: State,
        inputs: Mapping[str, Result] | None = None,
        upstream_states: Mapping[Edge, State] | None = None,
        context: dict[str, Any] | None = None,
    ) -> State:
        """After a Looped iteration, start the next one from a fresh Pending."""
        assert isinstance(state, Looped)
        loop_context = context if context is not None else self.context
        loop_context["task_loop_count"] = state.loop_count + 1
        loop_context["task_loop_result"] = state.result
        loop_context.pop("resume", None)
        pending = Pending(f"Looping task (on loop index {state.loop_count})")
        # Prefect restarts silently; the ledger still records the change.
        self._record(pending)
        return pending
