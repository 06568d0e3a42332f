"""The smallest flow: one parameter, two tasks.

from examples.hello import flow
state = flow.run(parameters={"name": "Ada"})        # local, in this process
runledger run examples.hello:flow -p name=Ada       # through Kafka
"""

from __future__ import annotations

from engine import Flow, Parameter, task


@task
def greet(name: str) -> str:
    return f"Hello, {name}!"


@task
def shout(text: str) -> str:
    return text.upper()


with Flow("hello") as flow:
    name = Parameter("name", default="world")
    shout(greet(name))
