"""What every facesearch command line shares: user errors become one clear line and a
non-zero exit instead of a traceback, and logging goes to stderr."""
from __future__ import annotations

import json
import logging
import sys

import click

from .errors import DataError, ImageError, ModelError

USER_ERRORS: tuple[type[Exception], ...] = (DataError, ModelError, ImageError)


def register_user_error(error_type: type[Exception]) -> None:
    """Other packages (indexer, search) add their own user-facing error types here."""
    global USER_ERRORS
    if error_type not in USER_ERRORS:
        USER_ERRORS = USER_ERRORS + (error_type,)


# The command list of `--help` shows each command's whole first sentence (wrapped), where
# click would cut it to the width left beside the names and end it with "...".
WHOLE_SUMMARY = 10_000


class FriendlyGroup(click.Group):
    def format_commands(self, ctx, formatter):
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(WHOLE_SUMMARY)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as error:
            raise click.ClickException(str(error)) from None


def whole_number(text: str) -> int | None:
    """The number written in plain ASCII digits (at most 9), else None. int() would also
    take "+3", "1_0", " 3" and other scripts' digits; a count typed or sent by a client
    should be only what it looks like."""
    if text.isascii() and text.isdigit() and len(text) <= 9:
        return int(text)
    return None


class Count(click.ParamType):
    """A click option of at least `minimum`, in plain ASCII digits (see whole_number)."""

    name = "integer"

    def __init__(self, minimum: int = 1):
        self.minimum = minimum

    def convert(self, value, param, ctx):
        number = value if isinstance(value, int) else whole_number(str(value))
        if number is None or number < self.minimum:
            self.fail(f"{value!r} is not a whole number of at least {self.minimum} (digits 0-9)", param, ctx)
        return number


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(message)s")


def print_json(payload) -> None:
    """The one JSON object a `--json` command prints, as its last line of standard output."""
    click.echo(json.dumps(payload, default=str))
