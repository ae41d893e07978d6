"""facesearch's gallery index: image embeddings in FAISS, their metadata in SQLite (or, per
index, in Milvus and any SQLAlchemy database: indexer.settings).

`Gallery` is the read-only view that search and web use; `IndexWriter` (indexer.writer) is
the one process at a time that changes an index; `indexer` (indexer.cli) is the command line.
"""
from .errors import IndexBusyError, IndexCorruptError, IndexerError, IndexMissingError, ModelMismatchError


def __getattr__(name):
    # Gallery brings SQLAlchemy, Alembic and FAISS: imported on first use, so that
    # `indexer --help` and a refused lock answer without loading them.
    if name == "Gallery":
        from .gallery import Gallery
        return Gallery
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Gallery", "IndexerError", "IndexMissingError", "IndexCorruptError", "IndexBusyError",
           "ModelMismatchError"]
