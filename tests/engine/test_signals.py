"""engine.signals against the signal facts recorded from Prefect 1.4.1."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pendulum
import pytest

from engine import signals
from engine.state import (
    STATE_CLASSES,
    Failed,
    Looped,
    Paused,
    Retrying,
    Running,
    Success,
    TimedOut,
)

GOLDEN = json.loads(
    (
        Path(__file__).resolve().parents[1] / "golden" / "recordings" / "state_model.json"
    ).read_text()
)["signals"]
STATE_SIGNALS = sorted(name for name, facts in GOLDEN.items() if "state_class" in facts)
T = pendulum.datetime(2024, 1, 2, 3, 4, 5)


def _base_names(cls: type) -> list[str]:
    return [k.__name__ for k in cls.__mro__[1:] if k is not object]


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_signal_base_classes_match_prefect(name: str) -> None:
    """Each signal has Prefect's base classes, ending in BaseException."""
    assert _base_names(getattr(signals, name)) == GOLDEN[name]["base_classes"]


@pytest.mark.parametrize("name", STATE_SIGNALS)
def test_state_signals_build_prefect_states(name: str) -> None:
    """A state signal's .state has Prefect's class, message and default result."""
    facts = GOLDEN[name]
    signal = getattr(signals, name)("m")
    assert type(signal.state) is STATE_CLASSES[facts["state_class"]]
    assert signal.state.message == facts["state_message"]
    assert repr(signal.state.result) == facts["default_state_result"]


@pytest.mark.parametrize("name", sorted(set(STATE_SIGNALS) - {"LOOP"}))
def test_default_state_result_is_the_signal_itself(name: str) -> None:
    """Without result=, the state's result is the signal instance."""
    signal = getattr(signals, name)("m")
    assert signal.state.result is signal


def test_loop_default_result_is_its_repr_string() -> None:
    """LOOP stores repr(signal), a plain string, as its default result."""
    signal = signals.LOOP("m")
    assert signal.state.result == "LOOP('m')"
    assert signals.LOOP(message="m").state.result == "LOOP('m')"


def test_result_keyword_overrides_the_default() -> None:
    """result= becomes the state's result (incl. None, which means no result)."""
    assert signals.SUCCESS("ok", result=5).state.result == 5
    assert signals.LOOP("again", result={"n": 1}).state.result == {"n": 1}
    assert signals.FAIL("no", result=None).state.result is None


def test_extra_keywords_reach_the_state() -> None:
    """start_time, run_count and loop_count are passed to the state's constructor."""
    paused = signals.PAUSE("wait", start_time=T).state
    assert isinstance(paused, Paused)
    assert paused.start_time == T
    retry = signals.RETRY("again", start_time=T, run_count=2).state
    assert isinstance(retry, Retrying)
    assert (retry.start_time, retry.run_count) == (T, 2)
    loop = signals.LOOP("again", loop_count=3).state
    assert isinstance(loop, Looped)
    assert loop.loop_count == 3


def test_signals_without_message_have_none_message() -> None:
    """A signal raised without arguments makes a state without message."""
    assert signals.SKIP().state.message is None
    assert signals.PAUSE().state.start_time is None  # type: ignore[attr-defined]


def _swallow_exceptions(signal: BaseException) -> None:
    try:
        raise signal
    except Exception:  # the point: this clause must not catch signals
        return


def test_signals_escape_except_exception() -> None:
    """Signals derive from BaseException, so `except Exception` does not catch them."""
    with pytest.raises(signals.FAIL):
        _swallow_exceptions(signals.FAIL("boom"))


def test_endrun_carries_its_state() -> None:
    """ENDRUN(state) keeps the state object and uses its message."""
    state = Success("done", result=1)
    endrun = signals.ENDRUN(state)
    assert endrun.state is state
    assert str(endrun) == "done"


def test_endrun_survives_pickling() -> None:
    """A pickled ENDRUN still carries an equal state."""
    state = Failed("x", result=3)
    assert pickle.loads(pickle.dumps(signals.ENDRUN(state))).state == state


def test_task_timeout_signal_is_an_ordinary_exception() -> None:
    """TaskTimeoutSignal is an Exception, not a state signal."""
    assert issubclass(signals.TaskTimeoutSignal, Exception)
    assert not issubclass(signals.TaskTimeoutSignal, signals.PrefectSignal)


@pytest.mark.parametrize("name", STATE_SIGNALS)
def test_signal_from_state_maps_back_to_the_signal(name: str) -> None:
    """signal_from_state(signal.state) is the signal's own class."""
    cls: Any = getattr(signals, name)
    assert signals.signal_from_state(cls("m").state) is cls


@pytest.mark.parametrize("state", [Running(), TimedOut()])
def test_signal_from_state_rejects_states_without_a_signal(state: Any) -> None:
    """States no signal produces (Running, TimedOut, ...) raise ValueError."""
    with pytest.raises(ValueError, match="no signal produces"):
        signals.signal_from_state(state)
