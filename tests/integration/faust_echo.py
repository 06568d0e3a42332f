"""A faust worker module run as a subprocess by the integration tests.

``python -m tests.integration.faust_echo worker --without-web -l warning`` starts a
faust worker (configured only through ``RUNLEDGER_*`` variables) whose one agent
reads ``<prefix>echo-in`` and writes each value, upper-cased, with the worker's pid
to ``<prefix>echo-out``. The test checks the reply, then stops the worker by PID.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterable

import faust

from services.settings import Settings
from tests.integration.faust_support import faust_options

settings = Settings()
app = faust.App(
    f"{settings.app_id}-echo",
    **faust_options(settings),
)
echo_in = app.topic(
    f"{settings.topic_prefix}echo-in", value_type=bytes, value_serializer="raw", partitions=4
)
echo_out = app.topic(
    f"{settings.topic_prefix}echo-out", value_type=bytes, value_serializer="raw", partitions=1
)


@app.agent(echo_in)
async def echo(stream: AsyncIterable[bytes]) -> None:
    """Answer every value on the reply topic."""
    pid = str(os.getpid()).encode()
    async for value in stream:
        await echo_out.send(value=value.upper() + b" " + pid)


if __name__ == "__main__":
    app.main()
