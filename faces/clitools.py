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


class FriendlyGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as error:
            raise click.ClickException(str(error)) from None


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(message)s")


def print_json(payload) -> None:
    """The one JSON object a `--json` command prints, as its last line of standard output."""
    click.echo(json.dumps(payload, default=str))
