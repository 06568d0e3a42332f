"""Building trusted events without validation, for the ledger's hot path.

`decide` creates most events from values it already validated; pydantic's
`model_construct` costs more than validation itself (measured ~15 us vs ~9 us
per event), so the hot path uses this constructor. Everything that arrives
from outside is still validated by `events.codec.decode`.

Nothing is checked or normalised here beyond the field names: callers pass
values of the declared types, in particular `occurred_at` as an aware UTC
datetime.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)

_set = object.__setattr__
_new = object.__new__
_FACTORY: Any = object()  # marks a default made per instance (a shared `{}` would leak)
_builders: dict[type[BaseModel], Callable[..., dict[str, Any]]] = {}


def _builder(cls: type[BaseModel]) -> Callable[..., dict[str, Any]]:
    """A function whose signature is the model's fields, returning their values in order.

    Generated once per class: Python's own argument binding fills defaults and
    rejects unknown or missing fields (TypeError), and the dict literal keeps
    declaration order, so `encode` writes the same bytes as for a validated event.
    """
    fields = cls.model_fields
    required = [n for n, f in fields.items() if f.is_required()]
    optional = [n for n, f in fields.items() if not f.is_required()]
    namespace: dict[str, Any] = {"_FACTORY": _FACTORY}
    params = []
    for name in optional:
        field = fields[name]
        namespace[f"_d_{name}"] = _FACTORY if field.default_factory is not None else field.default
        params.append(f"{name}=_d_{name}")
    body = [f"    return {{{', '.join(f'{n!r}: {n}' for n in fields)}}}"]
    for name in optional:
        factory = fields[name].default_factory
        if factory is not None:
            namespace[f"_f_{name}"] = factory
            body.insert(0, f"    if {name} is _FACTORY: {name} = _f_{name}()")
    signature = ", ".join(["*", *required, *params]) if fields else ""
    source = f"def build({signature}):\n" + "\n".join(body) + "\n"
    exec(source, namespace)  # generated from the model's own field names only
    build: Callable[..., dict[str, Any]] = namespace["build"]
    return build


def maker(cls: type[M], *names: str) -> Callable[..., M]:
    """A positional constructor `make(v1, v2, ...)` for the given fields of `cls`.

    For the ledger's hottest path (one TaskRunTransitioned per transition): the
    values come positionally in the order of `names`, the other fields take their
    defaults (which must not be default factories), and nothing is checked.
    """
    fields = cls.model_fields
    unknown = [n for n in names if n not in fields]
    missing = [n for n, f in fields.items() if f.is_required() and n not in names]
    if unknown or missing:
        raise TypeError(f"{cls.__name__}: unknown fields {unknown}, missing fields {missing}")
    namespace: dict[str, Any] = {"_new": _new, "_set": _set, "_cls": cls, "_all": frozenset(fields)}
    entries = []
    for name, field in fields.items():
        if name in names:
            entries.append(f"{name!r}: {name}")
            continue
        if field.default_factory is not None:
            raise TypeError(f"{cls.__name__}.{name} has a default factory; pass it explicitly")
        namespace[f"_d_{name}"] = field.default
        entries.append(f"{name!r}: _d_{name}")
    source = (
        f"def make({', '.join(names)}):\n"
        "    obj = _new(_cls)\n"
        f"    _set(obj, '__dict__', {{{', '.join(entries)}}})\n"
        "    _set(obj, '__pydantic_fields_set__', _all)\n"
        "    _set(obj, '__pydantic_extra__', None)\n"
        "    _set(obj, '__pydantic_private__', None)\n"
        "    return obj\n"
    )
    exec(source, namespace)  # generated from the model's own field names only
    make: Callable[..., M] = namespace["make"]
    return make


def construct(cls: type[M], **fields: Any) -> M:
    """An instance of `cls` from already-valid field values (defaults filled in).

    Unknown or missing required fields raise `TypeError`; values are not checked.
    """
    build = _builders.get(cls)
    if build is None:
        build = _builders[cls] = _builder(cls)
    try:
        values = build(**fields)
    except TypeError as exc:
        raise TypeError(f"{cls.__name__}: {exc}") from None
    obj = _new(cls)
    _set(obj, "__dict__", values)
    _set(obj, "__pydantic_fields_set__", set(fields))
    _set(obj, "__pydantic_extra__", None)
    _set(obj, "__pydantic_private__", None)
    return obj
