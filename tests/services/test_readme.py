"""README.md stays true to the code: settings table, subcommands, links."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from services.client.cli import build_parser, settings_table
from services.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
README = (REPO_ROOT / "README.md").read_text()


def test_the_readme_starts_with_the_two_commands() -> None:
    first_block = README.split("```")[1]
    assert "make demo" in first_block
    assert "make test" in first_block


def test_every_setting_is_documented_in_the_readme() -> None:
    missing = [
        name for name in Settings.model_fields if f"`RUNLEDGER_{name.upper()}`" not in README
    ]
    assert missing == []


def test_the_settings_table_is_the_generated_one() -> None:
    """Regenerate with `runledger config --markdown` when a setting changes."""
    match = re.search(r"<!-- settings:start -->\n(.*?)\n<!-- settings:end -->", README, re.S)
    assert match is not None
    assert match.group(1) == settings_table()


def test_every_subcommand_is_in_the_readme() -> None:
    parser = build_parser()
    [subparsers] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name in subparsers.choices:
        assert f"runledger {name}" in README, name


def test_relative_links_point_at_files_that_exist() -> None:
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", README):
        assert (REPO_ROOT / target).exists(), target
    assert "(docs/events.md)" in README


def test_the_local_python_example_runs_as_written() -> None:
    """The README's first Python example (flows run locally) executes and its asserts hold."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text.split("## Python API", 1)[1]
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, object] = {"__name__": "readme_example"}
    exec(compile(example, "README.md", "exec"), namespace)  # the asserts are the example's
    assert "state" in namespace
