"""atheris fuzzing of the wire decoder (coverage-guided; not part of the test suite).

    .venv/bin/python tests/fuzz/fuzz_decode.py -atheris_runs=200000

Any exception other than EventDecodeError is a crash that atheris reports with
the input that caused it.
"""

from __future__ import annotations

import contextlib
import sys

import atheris  # type: ignore[import-untyped, import-not-found, unused-ignore]

with atheris.instrument_imports():
    from events import EventDecodeError, decode, decode_command


def one_input(data: bytes) -> None:
    for decoder in (decode, decode_command):
        with contextlib.suppress(EventDecodeError):
            decoder(data)


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
