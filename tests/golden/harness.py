"""Compare what our engine recorded with the behaviour recorded from Prefect 1.4.1.

The functions here do not care which shell produced the events: the local
runner (`run_scenario_locally`) and the Kafka services both give a list of
ledger events, from which `sequences_from_events` builds per-task-run state
sequences keyed exactly like the golden `per_task_sequences`.
`assert_matches_golden` then compares sequences, final states, the flow state
and the scenario's extras, and fails with one readable report listing every
difference. The comparison rules are written down in README.md beside this file.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.golden.scenarios import RunObservation, Scenario

JSON = Any
Blob = Mapping[str, Any]
ValueOf = Callable[[Blob], Any]

GOLDEN_DIR = Path(
    os.environ.get(
        "RUNLEDGER_GOLDEN_DIR",
        Path(__file__).resolve().parent / "recordings",
    )
)
"""Where the recordings live (override with RUNLEDGER_GOLDEN_DIR)."""

RECORDED_HERE_DIR = Path(__file__).resolve().parent / "recorded_here"
"""Scenarios recorded from Prefect 1.4.1 in this repository (recorded_here/record.py)."""

NOT_FLOW_SCENARIOS = frozenset({"state_model"})
"""Golden files that record no flow (covered by the state model tests)."""

DROPPED_STATES = frozenset({"Submitted", "Queued"})
"""Orchestration meta states Prefect's local engine never produces; dropped before comparing."""

COMPARED_FIELDS = ("message", "result", "run_count", "loop_count", "n_map_states")
"""Fields of a golden sequence entry compared when the entry gives them (besides the class)."""

FINAL_FIELDS = ("class", "message", "result")
"""Fields of a golden final task state that are compared (plus `children` of Mapped)."""

STANDARD_KEYS = frozenset(
    {
        "scenario",
        "description",
        "engine",
        "format_notes",
        "tasks",
        "flow_runs",
        "per_task_sequences",
        "flow_transitions",
        "transitions",
    }
)
"""Keys every golden flow file has; any other key is a scenario extra."""


# ----- golden files ------------------------------------------------------------------------------


def load_golden(name: str) -> dict[str, JSON]:
    """The golden recording `name` (file stem, e.g. "map_basic"), shared or recorded here."""
    path = GOLDEN_DIR / f"{name}.json"
    if not path.exists():
        path = RECORDED_HERE_DIR / f"{name}.json"
    with path.open(encoding="utf-8") as fh:
        data = json.load(fh)
    assert isinstance(data, dict)
    return data


def golden_flow_scenarios() -> list[str]:
    """Stems of every golden file that records flow runs."""
    return sorted(p.stem for p in GOLDEN_DIR.glob("*.json") if p.stem not in NOT_FLOW_SCENARIOS)


def recorded_here_scenarios() -> list[str]:
    """Stems of the recordings made in this repository (tests/golden/recorded_here)."""
    return sorted(p.stem for p in RECORDED_HERE_DIR.glob("*.json"))


def golden_extras(golden: Mapping[str, JSON]) -> dict[str, JSON]:
    """The scenario-specific keys of a golden file (counters, prompts, observations...)."""
    return {k: v for k, v in golden.items() if k not in STANDARD_KEYS}


# ----- encoding values like the recorder did -----------------------------------------------------


def _is_prefect_signal(value: object) -> bool:
    return any(cls.__name__ == "PrefectSignal" for cls in type(value).__mro__)


def _signal_message(value: BaseException) -> Any:
    message = getattr(value, "message", None)
    if message is None and value.args:
        message = value.args[0]
    return message


def encode_value(value: Any) -> JSON:
    """Encode a result value as the golden files do (format_notes `encode_value`).

    Plain JSON values as they are (tuples as lists); Prefect signals as
    {"signal": type, "message": ...}; other exceptions as {"exception": type,
    "repr": ...}; any other object as {"repr": ...}.
    """
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [encode_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): encode_value(v) for k, v in value.items()}
    if isinstance(value, BaseException) and _is_prefect_signal(value):
        return {"signal": type(value).__name__, "message": _signal_message(value)}
    if isinstance(value, BaseException):
        return {"exception": type(value).__name__, "repr": repr(value)}
    return {"repr": repr(value)}


# ----- from ledger events to sequences -----------------------------------------------------------


def _field(event: Any, name: str) -> Any:
    if isinstance(event, Mapping):
        return event.get(name)
    return getattr(event, name, None)


def is_task_transition(event: Any) -> bool:
    """True for a TaskRunTransitioned event (model instance or decoded JSON)."""
    return bool(_field(event, "type") == "task_run_transitioned")


def is_flow_transition(event: Any) -> bool:
    """True for a FlowRunTransitioned event (model instance or decoded JSON)."""
    return bool(_field(event, "type") == "flow_run_transitioned")


def task_run_key(run_index: int, task_name: str, map_index: int | None) -> str:
    """The golden key of a task run: 'run<k>:<task name>' plus ' map_index=<i>'."""
    suffix = "" if map_index is None else f" map_index={map_index}"
    return f"run{run_index}:{task_name}{suffix}"


def _has_result(blob: Blob) -> bool:
    result = blob.get("_result")
    return isinstance(result, Mapping) and result.get("type") != "NoResultType"


def entry_from_blob(blob: Blob, value_of: ValueOf) -> dict[str, JSON]:
    """One sequence entry from a serialized state blob, the result hydrated and encoded."""
    entry: dict[str, JSON] = {"state": blob.get("type"), "message": blob.get("message")}
    if _has_result(blob):
        try:
            entry["result"] = encode_value(value_of(blob))
        except Exception as exc:  # shown in the diff rather than aborting it
            entry["result"] = {"unhydratable": repr(exc)}
    for name in ("run_count", "loop_count", "n_map_states", "start_time"):
        if name in blob:
            entry[name] = blob[name]
    wrapped = blob.get("state")
    if isinstance(wrapped, Mapping):
        entry["wrapped"] = wrapped
    return entry


def _drop_meta_states(entries: list[dict[str, JSON]], value_of: ValueOf) -> list[dict[str, JSON]]:
    kept: list[dict[str, JSON]] = []
    for position, entry in enumerate(entries):
        if entry["state"] not in DROPPED_STATES:
            kept.append(entry)
        elif position == 0 and isinstance(entry.get("wrapped"), Mapping):
            # A run created directly as Submitted(X) started from X.
            inner = entry_from_blob(entry["wrapped"], value_of)
            inner["initial"] = True
            kept.append(inner)
    return kept


def sequences_from_events(
    events: Iterable[Any],
    flow: Any,
    value_of: ValueOf,
    *,
    run_index: int = 0,
    drop_meta: bool = True,
) -> dict[str, list[dict[str, JSON]]]:
    """Per task run, the states the ledger recorded, keyed like golden `per_task_sequences`.

    The first entry is the state the run started from (the first event's
    `previous` when the ledger did not record the run's creation) and is marked
    `initial`. Entries carry `state`, `message`, `result` (encoded, only when the
    state has a result), `run_count` / `loop_count` / `n_map_states` /
    `start_time` when the blob has them, and `seq` / `occurred_at` of the event.
    Meta states (Submitted, Queued) are dropped unless `drop_meta` is False.
    """
    names = {slug: task.name for task, slug in flow.slugs.items()}
    sequences: dict[str, list[dict[str, JSON]]] = {}
    for event in events:
        if not is_task_transition(event):
            continue
        slug = _field(event, "task_slug")
        key = task_run_key(run_index, names.get(slug, slug), _field(event, "map_index"))
        entries = sequences.setdefault(key, [])
        previous = _field(event, "previous")
        if not entries and previous is not None:
            initial: dict[str, JSON] = (
                entry_from_blob(previous, value_of)
                if isinstance(previous, Mapping)
                else {"state": previous, "message": None}
            )
            initial["initial"] = True
            entries.append(initial)
        entry = entry_from_blob(_field(event, "state"), value_of)
        entry["seq"] = _field(event, "seq")
        entry["occurred_at"] = _field(event, "occurred_at")
        if not entries:
            entry["initial"] = True
        entries.append(entry)
    if drop_meta:
        sequences = {k: _drop_meta_states(v, value_of) for k, v in sequences.items()}
    return sequences


def flow_state_from_events(events: Iterable[Any]) -> dict[str, JSON] | None:
    """{class, message} of the last FlowRunTransitioned event, if any."""
    last: dict[str, JSON] | None = None
    for event in events:
        if is_flow_transition(event):
            blob = _field(event, "state")
            last = {"class": blob.get("type"), "message": blob.get("message")}
    return last


def final_states_from_sequences(
    sequences: Mapping[str, list[dict[str, JSON]]], run_index: int
) -> dict[str, dict[str, JSON]]:
    """Final {class, message, result, children} per task name, from the last entries.

    For a Mapped parent the children are the final entries of its
    'map_index=<i>' runs and its result is the list of their results (what the
    FlowRunner fills in silently in Prefect 1). Useful where only the ledger is
    at hand (the Kafka services).
    """
    prefix = f"run{run_index}:"
    finals: dict[str, dict[str, JSON]] = {}
    children: dict[str, dict[int, dict[str, JSON]]] = {}
    for key, entries in sequences.items():
        if not key.startswith(prefix) or not entries:
            continue
        name, _, index = key[len(prefix) :].partition(" map_index=")
        last = entries[-1]
        described = {
            "class": last["state"],
            "message": last.get("message"),
            "result": last.get("result"),
        }
        if index:
            children.setdefault(name, {})[int(index)] = described
        else:
            finals[name] = described
    for name, described in finals.items():
        if described["class"] == "Mapped":
            kids = [children.get(name, {})[i] for i in sorted(children.get(name, {}))]
            described["children"] = kids
            described["result"] = [kid["result"] for kid in kids]
    return finals


# ----- from in-memory states ---------------------------------------------------------------------


def state_value(state: Any, value_of: ValueOf | None = None) -> Any:
    """The result value of a State; hydrated through `value_of` when only a reference is held."""
    value = state.result
    holder = getattr(state, "_result", None)
    if (
        value is None
        and value_of is not None
        and not state.is_mapped()
        and holder is not None
        and type(holder).__name__ != "NoResultType"
    ):
        value = value_of(state.serialize())
    return value


def describe_state(state: Any, value_of: ValueOf | None = None) -> dict[str, JSON]:
    """{class, message, result (encoded), children (for Mapped)} of an in-memory State."""
    described: dict[str, JSON] = {
        "class": type(state).__name__,
        "message": state.message,
        "result": encode_value(state_value(state, value_of)),
    }
    if state.is_mapped():
        described["children"] = [
            describe_state(child, value_of) for child in state.map_states if child is not None
        ]
    return described


# ----- running a scenario locally ----------------------------------------------------------------


def run_scenario_locally(scenario: Scenario) -> list[RunObservation]:
    """Build the scenario's flow once and make every run through the local FlowRunner."""
    from engine.flow_runner import FlowRunner

    flow = scenario.flow_factory()
    observations: list[RunObservation] = []
    for index, spec in enumerate(scenario.runs):
        started = time.monotonic()
        outcome = FlowRunner(flow).run(**spec.runner_kwargs())
        wall_s = time.monotonic() - started
        scenario.after_run(index)
        observations.append(observe_outcome(outcome, flow, index, spec.label, wall_s))
    return observations


def observe_outcome(
    outcome: Any, flow: Any, index: int, label: str | None, wall_s: float
) -> RunObservation:
    """A RunObservation from a local RunOutcome (final states from `outcome.state.result`)."""
    value_of: ValueOf = outcome.value
    state = outcome.state
    task_states = outcome.task_states
    return RunObservation(
        index=index,
        label=label,
        flow_state={"class": type(state).__name__, "message": state.message},
        task_final_states={
            task.name: describe_state(task_state, value_of)
            for task, task_state in task_states.items()
        },
        sequences=sequences_from_events(outcome.events, flow, value_of, run_index=index),
        wall_s=wall_s,
    )


# ----- comparing ---------------------------------------------------------------------------------


def _show(value: Any) -> str:
    return json.dumps(value, default=repr, sort_keys=True)


def _show_entry(entry: Mapping[str, JSON] | None, fields: Iterable[str]) -> str:
    if entry is None:
        return "-"
    parts = [str(entry.get("state"))]
    for name in fields:
        if name == "message":
            parts.append(repr(entry.get("message")))
        elif name in entry:
            parts.append(f"{name}={_show(entry[name])}")
    return " ".join(parts)


def _project(ours: Mapping[str, JSON], golden: Mapping[str, JSON]) -> dict[str, JSON]:
    fields = ["state", *(f for f in COMPARED_FIELDS if f in golden)]
    return {f: ours.get(f, "<absent>") for f in fields}


def _expected(golden: Mapping[str, JSON]) -> dict[str, JSON]:
    fields = ["state", *(f for f in COMPARED_FIELDS if f in golden)]
    return {f: golden[f] for f in fields}


_SILENT = " (silent)"
_MAX_COLUMN = 64


def compare_sequence(
    key: str,
    golden: Sequence[Mapping[str, JSON]],
    ours: Sequence[Mapping[str, JSON]] | None,
) -> str | None:
    """A readable two-column diff of one task run's sequence, or None when it matches."""
    if ours is None:
        expected = " -> ".join(str(e["state"]) for e in golden)
        return f"{key}: no transitions recorded (golden: {expected})"
    mismatch = len(golden) != len(ours) or any(
        _project(o, g) != _expected(g) for g, o in zip(golden, ours, strict=False)
    )
    if not mismatch:
        return None
    lines = [f"{key}: sequence differs"]
    widest = max(len(_show_entry(g, COMPARED_FIELDS)) + len(_SILENT) for g in golden)
    width = min(widest, _MAX_COLUMN)
    lines.append(f"       {'golden (Prefect 1.4.1)':<{width}} | ours")
    for i in range(max(len(golden), len(ours))):
        g = golden[i] if i < len(golden) else None
        o = ours[i] if i < len(ours) else None
        fields = [f for f in COMPARED_FIELDS if g is not None and f in g]
        same = g is not None and o is not None and _project(o, g) == _expected(g)
        marker = "   " if same else ">> "
        implicit = _SILENT if g is not None and g.get("implicit") else ""
        left = _show_entry(g, fields or ("message",)) + implicit
        right = _show_entry(o, fields or ("message",))
        lines.append(f"{marker}{i:>2}  {left:<{width}} | {right}")
    return "\n".join(lines)


def compare_final_state(
    where: str, golden: Mapping[str, JSON], ours: Mapping[str, JSON] | None
) -> list[str]:
    """Differences between a golden final task state and ours (class, message, result, children)."""
    if ours is None:
        return [
            f"{where}: no final state (golden: {golden.get('class')} {golden.get('message')!r})"
        ]
    problems = [
        f"{where}: {name} is {_show(ours.get(name))}, golden {_show(golden.get(name))}"
        for name in FINAL_FIELDS
        if ours.get(name) != golden.get(name)
    ]
    if "children" in golden:
        theirs_kids: Sequence[Mapping[str, JSON]] = golden["children"]
        our_kids: Sequence[Mapping[str, JSON]] = ours.get("children") or []
        if len(theirs_kids) != len(our_kids):
            problems.append(f"{where}: {len(our_kids)} mapped children, golden {len(theirs_kids)}")
        for i, (g, o) in enumerate(zip(theirs_kids, our_kids, strict=False)):
            problems += compare_final_state(f"{where} child {i}", g, o)
    return problems


def _base_name(key: str) -> str:
    return key.partition(" map_index=")[0]


def compare_run(golden: Mapping[str, JSON], observation: RunObservation) -> list[str]:
    """Every difference between one golden flow run and our observation of it."""
    k = observation.index
    problems: list[str] = []
    run = golden["flow_runs"][k]
    expected_flow = run["flow_final_state"]
    if (observation.flow_state.get("class"), observation.flow_state.get("message")) != (
        expected_flow["class"],
        expected_flow["message"],
    ):
        problems.append(
            f"run{k} flow: {observation.flow_state.get('class')} "
            f"{observation.flow_state.get('message')!r}, golden {expected_flow['class']} "
            f"{expected_flow['message']!r}"
        )
    for name, expected in run["task_final_states"].items():
        problems += compare_final_state(
            f"run{k}:{name} final state",
            expected,
            observation.task_final_states.get(name),
        )
    prefix = f"run{k}:"
    golden_sequences = {
        key: seq for key, seq in golden["per_task_sequences"].items() if key.startswith(prefix)
    }
    for key, expected_seq in golden_sequences.items():
        problem = compare_sequence(key, expected_seq, observation.sequences.get(key))
        if problem:
            problems.append(problem)
    sequenced_tasks = {_base_name(key) for key in golden_sequences}
    for key, ours in observation.sequences.items():
        if key in golden_sequences:
            continue
        if _base_name(key) in sequenced_tasks:
            # e.g. a mapped child the golden run does not have
            shown = " -> ".join(str(e["state"]) for e in ours)
            problems.append(f"{key}: unexpected task run ({shown})")
    return problems


def _normalised(value: Any) -> JSON:
    return json.loads(json.dumps(value, default=repr))


def compare_extras(golden: Mapping[str, JSON], observed: Mapping[str, JSON]) -> list[str]:
    """Differences between the golden extras and the values the scenario observed."""
    problems: list[str] = []
    expected = golden_extras(golden)
    for key, value in expected.items():
        if key not in observed:
            problems.append(f"extra {key!r}: not observed by the scenario (golden {_show(value)})")
        elif _normalised(observed[key]) != value:
            problems.append(f"extra {key!r}: ours {_show(observed[key])}, golden {_show(value)}")
    for key in observed:
        if key not in expected:
            problems.append(f"extra {key!r}: observed but absent from the golden file")
    return problems


def assert_matches_golden(
    scenario: Scenario,
    observations: Sequence[RunObservation],
    golden: Mapping[str, JSON] | None = None,
) -> None:
    """Fail with one report of every difference between our runs and the golden recording."""
    golden = load_golden(scenario.golden) if golden is None else golden
    golden = scenario.deliberately(dict(golden))
    problems: list[str] = []
    expected_runs = len(golden["flow_runs"])
    if len(observations) != expected_runs:
        problems.append(f"{len(observations)} flow runs observed, golden has {expected_runs}")
    for observation in observations[:expected_runs]:
        problems += compare_run(golden, observation)
    problems += compare_extras(golden, scenario.extras())
    for check in scenario.checks:
        try:
            check(observations)
        except (AssertionError, KeyError, StopIteration, IndexError) as exc:
            problems.append(f"{check.__name__}: {type(exc).__name__}: {exc}")
    if problems:
        report = "\n".join(f"- {p}" for p in problems)
        raise AssertionError(
            f"{scenario.name}: {len(problems)} difference(s) from the Prefect 1.4.1 golden "
            f"recording {scenario.golden}.json\n{report}"
        )
