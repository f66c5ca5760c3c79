"""Subcommands that installed distributions add to the ``taskwarren`` command.

A distribution registers a click command under the ``taskwarren.commands`` entry
point group, for instance (the email pipeline's ``taskwarren demo``)::

    [project.entry-points."taskwarren.commands"]
    demo = "workers.email_analysis.demo:demo_command"

The CLI loads such a command only when it is run or listed, so the library never
imports an application, and a built-in command of the same name always wins.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

import click

#: Entry point group through which installed distributions add ``taskwarren`` subcommands.
COMMANDS_GROUP = "taskwarren.commands"


def installed_commands() -> dict[str, EntryPoint]:
    """The entry points of :data:`COMMANDS_GROUP`, by command name."""
    return {ep.name: ep for ep in entry_points(group=COMMANDS_GROUP)}


class CommandGroup(click.Group):
    """A click group of the built-in commands, then those installed distributions add."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Built-in and installed command names, sorted."""
        return sorted({*super().list_commands(ctx), *installed_commands()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The built-in command ``cmd_name``, else the installed one, loaded now.

        Raises:
            click.ClickException: the entry point does not name a click command.
        """
        command = super().get_command(ctx, cmd_name)
        entry = None if command else installed_commands().get(cmd_name)
        if entry is None:
            return command
        loaded = entry.load()
        if not isinstance(loaded, click.Command):
            raise click.ClickException(
                f"{COMMANDS_GROUP} entry point {entry.name} = {entry.value} is not a click command")
        return loaded
