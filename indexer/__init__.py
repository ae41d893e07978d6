"""facesearch's gallery index: image embeddings in FAISS, their metadata in SQLite.

`Gallery` is the read-only view that search and web use; `IndexWriter` (indexer.writer) is
the one process at a time that changes an index; `indexer` (indexer.cli) is the command line.
"""
from .errors import IndexBusyError, IndexCorruptError, IndexerError, IndexMissingError, ModelMismatchError
from .gallery import Gallery

__all__ = ["Gallery", "IndexerError", "IndexMissingError", "IndexCorruptError", "IndexBusyError",
           "ModelMismatchError"]
