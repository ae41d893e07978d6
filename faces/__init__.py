"""facesearch's face core, shared by trainer, indexer, search and web: image loading,
face detection and alignment, the embedding networks and their checkpoints."""
