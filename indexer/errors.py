"""The indexer's user-facing errors: each message says what is wrong and what to run.

They are registered with faces.clitools, so every facesearch command line prints them as
one line and a non-zero exit instead of a traceback.
"""
from __future__ import annotations

from faces.clitools import register_user_error


class IndexerError(Exception):
    """Base of every error the indexer reports to a user."""


class IndexMissingError(IndexerError):
    """No index (or no usable index) at the given folder."""


class IndexCorruptError(IndexerError):
    """The vectors file cannot be read; `indexer check --repair` rebuilds it."""


class IndexBusyError(IndexerError):
    """Another process is changing the index right now."""


class ModelMismatchError(IndexerError):
    """An embedding model (or detector) other than the index's own."""


class IndividualError(IndexerError):
    """A request about individuals that cannot be done as asked (a bad name, merging across
    species): the web API answers it with 400."""


class IndividualNotFound(IndividualError):
    """No individual (or no face of it) with the given id: 404 in the web API."""


register_user_error(IndexerError)
