"""docs/cli.md, written from the click commands themselves: the command line reference reads on
GitHub as plain markdown, and a test keeps it equal to ``socialfeat --help``.

    python -m socialfeat.cli_reference > docs/cli.md
"""

from __future__ import annotations

import click

from socialfeat.cli import main

WIDTH = 78  # what `socialfeat --help` prints in an 80-column terminal (COLUMNS=80): click keeps 2 free


def render() -> str:
    """The whole reference: every command's usage, description and option table."""
    root = click.Context(main, info_name="socialfeat", terminal_width=WIDTH, **main.context_settings)
    parts = ["# Command line reference", "",
             "Generated from the commands themselves (`python -m socialfeat.cli_reference > docs/cli.md`); "
             "a test checks that it matches `socialfeat --help`.", "",
             "```text", main.get_help(root), "```", ""]
    for name in main.list_commands(root):
        command = main.get_command(root, name)
        ctx = click.Context(command, info_name=name, parent=root, terminal_width=WIDTH)
        parts += [f"## socialfeat {name}", "", "```text", command.get_help(ctx), "```", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")
