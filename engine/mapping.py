"""What a mapped task's parent and children see upstream (Prefect 1's FlowRunner rules).

Pure helpers: given upstream states keyed by Edge, build the states the parent
run checks (`upstream_for_parent`) and the states child `i` receives
(`upstream_for_child`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from engine.edges import Edge
from engine.results import Result
from engine.state import Mapped, State, with_result


def _is_nested(value: Any) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str | bytes)
        and all(isinstance(v, Sequence) and not isinstance(v, str | bytes) for v in value)
    )


def flatten_value(value: Any) -> Any:
    """Concatenate one level of nesting; leave the value alone if it is not nested."""
    if not _is_nested(value):
        return value
    return [item for inner in value for item in inner]


def _with_value(state: State, value: Any) -> State:
    return with_result(state, Result(value=value))


def flatten_mapped_children(children: Sequence[State | None]) -> list[State]:
    """One pseudo-child per element of each successful child's sequence result."""
    flat: list[State] = []
    for child in children:
        if child is None:
            continue
        value = child.result
        if child.is_successful() and not child.is_skipped() and _is_sequence(value):
            flat.extend(_with_value(child, v) for v in value)
        else:
            flat.append(child)
    return flat


def _is_sequence(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def flattened_upstream(edge: Edge, state: State) -> State:
    """The upstream state as a flattened edge presents it to children and reduces."""
    if not edge.flattened:
        return state
    if state.is_mapped():
        children = flatten_mapped_children(state.map_states)  # type: ignore[attr-defined]
        return Mapped(
            message=state.message, map_states=children, result=[c.result for c in children]
        )
    return _flatten_plain(state)


def _flatten_plain(state: State) -> State:
    if state.is_successful() and not state.is_skipped() and not state.is_mapped():
        return _with_value(state, flatten_value(state.result))
    return state


def upstream_for_parent(upstream_states: Mapping[Edge, State]) -> dict[Edge, State]:
    """What a mapped parent's run checks, as Prefect's FlowRunner hands it over.

    A plain upstream on a flattened edge arrives flattened; a Mapped upstream
    arrives as is (so its n_map_states counts its children, not their elements).
    """
    return {edge: _flatten_plain(s) if edge.flattened else s for edge, s in upstream_states.items()}


def flattened(upstream_states: Mapping[Edge, State]) -> dict[Edge, State]:
    """Every flattened edge flattened: what children and non-mapped downstreams receive."""
    if not any(edge.flattened for edge in upstream_states):
        return dict(upstream_states)  # the usual case: a plain copy, no edge rehashed
    return {edge: flattened_upstream(edge, s) for edge, s in upstream_states.items()}


def child_count(upstream_states: Mapping[Edge, State]) -> int:
    """How many children the mapped edges allow (the shortest source wins)."""
    # Prefect: a Mapped source counts its children, a successful plain source the
    # length of its result; a failed source does not limit the count (each child
    # receives it whole, and its trigger fails).
    counts = []
    for edge, state in upstream_states.items():
        if not edge.mapped:
            continue
        if state.is_mapped():
            counts.append(len(state.map_states))  # type: ignore[attr-defined]
        elif state.is_successful():
            try:
                counts.append(len(state.result))
            except TypeError:
                counts.append(0)
    return min(counts) if counts else 0


def upstream_for_child(
    upstream_states: Mapping[Edge, State], index: int, indexed: Collection[Edge] = ()
) -> dict[Edge, State]:
    """The upstream states child `index` receives (from `flattened` states).

    Edges in `indexed` already carry child `index`'s own state (the ledger picked
    it from a Mapped upstream) and are passed as they are.
    """
    child: dict[Edge, State] = {}
    for edge, state in upstream_states.items():
        if not edge.mapped or (indexed and edge in indexed):  # skip hashing for no edges
            child[edge] = state
        elif state.is_mapped():
            child[edge] = state.map_states[index]  # type: ignore[attr-defined]
        elif state.is_successful():
            child[edge] = _with_value(state, state.result[index])
        else:
            child[edge] = state
    return child
