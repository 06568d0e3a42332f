"""Golden replays: our engine against behaviour recorded from Prefect 1.4.1."""
