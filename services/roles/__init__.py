"""The roles a process runs: ledger (with its scheduler), worker and api, and their App."""
