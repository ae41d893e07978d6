"""facesearch trainer: FaceNet-style face embeddings with online triplet mining."""
