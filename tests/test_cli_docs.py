"""docs/cli.md is generated from the parser by docs/gen_cli.py and must match it."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from petseg.cli import build_parser

GENERATOR = Path(__file__).resolve().parents[1] / "docs" / "gen_cli.py"


@pytest.fixture(scope="module")
def gen_cli() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_cli", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _all_option_strings(parser: argparse.ArgumentParser) -> set[str]:
    found = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                found |= _all_option_strings(subparser)
        elif action.help is not argparse.SUPPRESS and not isinstance(action, argparse._HelpAction):
            found.update(action.option_strings)
    return found


def test_cli_md_matches_the_parser(gen_cli: ModuleType) -> None:
    expected = gen_cli.render(build_parser())
    actual = gen_cli.CLI_MD.read_text(encoding="utf-8") if gen_cli.CLI_MD.exists() else ""
    assert actual == expected, (
        f"docs/cli.md is out of date with petseg's parser; regenerate it with "
        f"`{gen_cli.REGENERATE}` and commit the result"
    )


def test_every_flag_of_every_command_is_documented(gen_cli: ModuleType) -> None:
    parser = build_parser()
    text = gen_cli.render(parser)
    missing = sorted(flag for flag in _all_option_strings(parser) if f"`{flag}`" not in text)
    assert not missing
    for command in ("download", "check", "train", "evaluate", "predict", "export"):
        assert f"## `petseg {command}`" in text


def test_render_walks_groups_nested_commands_and_fills_help_fields(gen_cli: ModuleType) -> None:
    parser = argparse.ArgumentParser(prog="tool", description="A tool.")
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="start a server")
    serve.add_argument("--port", type=int, default=8000, help="port (default %(default)s)")
    network = serve.add_argument_group("network", "where it listens")
    network.add_argument("--host", choices=["127.0.0.1", "0.0.0.0"], help="a|b")
    network.add_argument("--quiet", action="store_true", help="say less")
    nested = serve.add_subparsers(dest="mode").add_parser("status", help="ask a running server")
    nested.add_argument("--timeout", type=float, default=2.5, help="seconds to wait")
    hidden = commands.add_parser("hidden", help="")
    hidden.add_argument("--secret", help=argparse.SUPPRESS)

    text = gen_cli.render(parser)

    assert "## `tool serve`" in text and "## `tool serve status`" in text
    assert "- [`tool serve status`](#tool-serve-status): ask a running server" in text
    assert "**network**: where it listens" in text
    assert "port (default 8000)" in text  # %(default)s filled in as --help does
    assert "seconds to wait (default 2.5)" in text  # a default the help text leaves out
    assert "`127.0.0.1\\|0.0.0.0`" in text and "| a\\|b |" in text  # pipes cannot break a row
    assert "say less |" in text and "say less (default" not in text
    assert "--secret" not in text


def test_check_mode_names_the_command_to_regenerate(
    gen_cli: ModuleType,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stale = tmp_path / "cli.md"
    stale.write_text("# an old reference\n", encoding="utf-8")
    monkeypatch.setattr(gen_cli, "CLI_MD", stale)
    monkeypatch.setattr(sys, "argv", ["gen_cli.py", "--check"])

    assert gen_cli.main() == 1
    assert gen_cli.REGENERATE in capsys.readouterr().err
    assert gen_cli.main([]) == 0  # regenerates
    assert gen_cli.main(["--check"]) == 0
