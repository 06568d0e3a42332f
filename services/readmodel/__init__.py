"""The api role's read model: a derived, versioned, rebuildable copy of the ledger on disk.

`store` is the SQLite file (per run its ledger records and summary, per partition
the offset folded so far), `cache` the bounded set of views kept in memory,
`model` the fold that keeps both, and `verify` the comparison of all of it with a
fresh fold of the ledger topic (`runledger verify`). The ledger topic is the only
truth: deleting the file costs a rebuild, nothing else.
"""
