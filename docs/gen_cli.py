"""Write docs/cli.md, the flag reference, from petseg's argparse parser.

    python docs/gen_cli.py           # rewrite docs/cli.md
    python docs/gen_cli.py --check   # exit 1 when docs/cli.md differs from the parser

The text is built from the parser's actions, not from `--help`, so it does not depend on the
terminal's width. It walks every subcommand (nested ones too) and every argument group, so a new
command or group appears without changes here; tests/test_cli_docs.py keeps the file current.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

CLI_MD = Path(__file__).resolve().parent / "cli.md"
REGENERATE = "python docs/gen_cli.py"

HEADER = f"""\
# Command-line reference

<!-- Generated from the parser by `{REGENERATE}`; do not edit by hand. -->

Every flag is spelled with underscores or with hyphens (`--data_path` = `--data-path`).
`petseg COMMAND --help` prints the same text; `python -m petseg` works as `petseg`.
"""

# Actions whose default says nothing a reader needs.
_NO_DEFAULT = (
    argparse._HelpAction,
    argparse._VersionAction,
    argparse._StoreConstAction,
    argparse._AppendConstAction,
    argparse._CountAction,
    argparse._SubParsersAction,
)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return _one_line(text).replace("|", "\\|")


def _expand_help(action: argparse.Action, prog: str) -> str:
    """The help text with argparse's %(default)s-style fields filled in, as --help shows it."""
    text = action.help or ""
    if "%" not in text:
        return text
    params = {key: value for key, value in vars(action).items() if value is not argparse.SUPPRESS}
    params["prog"] = prog
    for key, value in list(params.items()):
        if hasattr(value, "__name__"):
            params[key] = value.__name__
    if params.get("choices") is not None:
        params["choices"] = ", ".join(str(choice) for choice in params["choices"])
    return text % params


def _value(action: argparse.Action) -> str:
    """What the flag takes: its choices or its metavar; empty for a switch."""
    if action.nargs == 0:
        return ""
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        shown = "\\|".join(str(choice) for choice in action.choices)
    else:
        metavar = action.metavar if action.metavar is not None else action.dest.upper()
        shown = metavar if isinstance(metavar, str) else " ".join(metavar)
    if action.nargs == "?":
        shown = f"[{shown}]"
    elif action.nargs == "*":
        shown = f"[{shown} ...]"
    elif action.nargs == "+":
        shown = f"{shown} [{shown} ...]"
    return f"`{shown}`"


def _described(action: argparse.Action, prog: str) -> str:
    """The help text, with the default added where the text does not give one itself."""
    text = _one_line(_expand_help(action, prog))
    default = action.default
    quiet = isinstance(action, _NO_DEFAULT) or default in (None, argparse.SUPPRESS)
    if quiet or action.nargs == 0 or "default" in text.lower():
        return text
    if isinstance(default, list | tuple):
        default = ",".join(str(item) for item in default)
    return f"{text} (default {default})"


def _name(action: argparse.Action) -> str:
    names = action.option_strings or [action.metavar or action.dest]
    return ", ".join(f"`{name}`" for name in names)


def _rows(actions: list[argparse.Action], prog: str) -> Iterator[str]:
    yield "| argument | value | what it does |"
    yield "|---|---|---|"
    for action in actions:
        yield f"| {_name(action)} | {_value(action)} | {_cell(_described(action, prog))} |"


def _shown(action: argparse.Action) -> bool:
    return action.help is not argparse.SUPPRESS and not isinstance(
        action, argparse._HelpAction | argparse._SubParsersAction
    )


def _subcommands(
    parser: argparse.ArgumentParser,
) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) for each subcommand, aliases listed once."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
        seen: set[int] = set()
        for name, subparser in action.choices.items():
            if id(subparser) not in seen:
                seen.add(id(subparser))
                yield name, helps.get(name, ""), subparser


def _section(parser: argparse.ArgumentParser, title: str, summary: str) -> Iterator[str]:
    yield f"## `{title}`"
    yield ""
    text = _one_line(parser.description or summary)
    if text:
        yield text
        yield ""
    groups = [
        (group, [action for action in group._group_actions if _shown(action)])
        for group in parser._action_groups
    ]
    groups = [(group, actions) for group, actions in groups if actions]
    for group, actions in groups:
        if len(groups) > 1:
            description = f": {_one_line(group.description)}" if group.description else ""
            yield f"**{_one_line(group.title or '')}**{description}"
            yield ""
        yield from _rows(actions, parser.prog)
        yield ""
    for name, help_text, subparser in _subcommands(parser):
        yield from _section(subparser, f"{title} {name}", help_text)


def _command_list(parser: argparse.ArgumentParser, prefix: str) -> Iterator[str]:
    for name, help_text, subparser in _subcommands(parser):
        anchor = f"{prefix} {name}".replace(" ", "-")
        yield f"- [`{prefix} {name}`](#{anchor}): {_one_line(help_text)}"
        yield from _command_list(subparser, f"{prefix} {name}")


def render(parser: argparse.ArgumentParser) -> str:
    """The Markdown reference of `parser`: a list of commands, then one section per command."""
    lines = [HEADER, *_command_list(parser, parser.prog), "", *_section(parser, parser.prog, "")]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    from petseg.cli import build_parser

    check = "--check" in (sys.argv[1:] if argv is None else argv)
    text = render(build_parser())
    if check:
        if CLI_MD.exists() and CLI_MD.read_text(encoding="utf-8") == text:
            return 0
        print(f"{CLI_MD} is out of date; regenerate it with `{REGENERATE}`", file=sys.stderr)
        return 1
    CLI_MD.write_text(text, encoding="utf-8")
    print(f"wrote {CLI_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
