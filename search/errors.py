"""search's user-facing error, apart from the engine so that the command line can catch it
without importing torch."""
from __future__ import annotations

from faces.clitools import register_user_error


class SearchError(Exception):
    """A search that cannot be answered as asked; the message says why and what to do."""


register_user_error(SearchError)
