"""Example flows. Workers import flows by path within RUNLEDGER_FLOW_ALLOWLIST,
which allows ``examples`` by default:

    runledger run examples.hello:flow -p name=Ada --watch
    runledger run examples.etl:flow -p day=2024-04-30 -p limit=5 --watch
    runledger demo                     # examples.demo:flow, twice, on its own broker
"""
