"""The search engine behind the web app: one per process, created on first use.

Loading the model and the index takes seconds and memory, so it happens once and every
request thread shares the result. It happens lazily so that a server started before its
index exists comes up and answers 503 with the reason instead of failing to start.
"""
from __future__ import annotations

import logging
import threading

from flask import current_app

log = logging.getLogger(__name__)

_EXTENSION_KEY = "facesearch.engine"
_creation_lock = threading.Lock()


class EngineUnavailable(Exception):
    """No usable index (missing, unreadable, built with another model): answered with 503."""


def unavailable(error: Exception) -> EngineUnavailable:
    """The 503 for an index that cannot be used: its message names no server path (the
    user errors' own messages do, for the operator; they go to the server log)."""
    from indexer.errors import IndexMissingError
    log.warning("search index not available: %s", error)
    if isinstance(error, IndexMissingError):
        return EngineUnavailable("search index not available: no index has been built yet "
                                 "(the operator runs `indexer build GALLERY`)")
    return EngineUnavailable("search index not available; the server log says why")


def get_engine():
    """The application's QueryEngine, created by the first request that needs it."""
    app = current_app._get_current_object()
    engine = app.extensions.get(_EXTENSION_KEY)
    if engine is None:
        with _creation_lock:   # concurrent first requests must not load it twice
            engine = app.extensions.get(_EXTENSION_KEY)
            if engine is None:
                engine = _open_engine(app.config)
                app.extensions[_EXTENSION_KEY] = engine
    return engine


def _open_engine(config):
    # Imported here: FAISS, SQLite and the face detector load with the first search, not
    # when the app is created, so the pages and a 503 come up at once.
    from search.engine import QueryEngine
    from faces import clitools

    try:
        return QueryEngine(config["INDEX"], model=config["MODEL"], detector=config["DETECTOR"])
    except clitools.USER_ERRORS as error:
        # The index, model and image errors every facesearch package registers.
        raise unavailable(error) from None
    except Exception:
        log.exception("the search engine failed to start")
        raise EngineUnavailable("the search engine failed to start; see the server log") from None


def indexed_model() -> dict | None:
    """{"species", "detector"} of the index for the page's wording: the loaded engine's, else
    read from the database without loading the model (the page must come up at once);
    None when there is no usable index yet."""
    app = current_app._get_current_object()
    engine = app.extensions.get(_EXTENSION_KEY)
    if engine is not None:
        return {"species": engine.model.species, "detector": engine.pipeline.detector_name,
                "models": [{"name": p.model.name, "species": p.model.species, "detector": p.detector_name}
                           for p in engine.pipelines]}
    from faces.detectors import resolve_detector
    from indexer.gallery import Gallery
    try:
        model = Gallery.indexed_model(app.config["INDEX"])
    except Exception as error:    # the search itself will say what is wrong
        log.warning("cannot read the index's model: %s", error)
        return None
    if model is None:
        return None
    try:
        detector = resolve_detector(app.config["DETECTOR"], model["detector"], model["species"])
    except ValueError as error:
        log.warning("%s", error)
        return None
    return {"species": model["species"], "detector": detector, "models": model["models"]}


def gallery_image(engine, image_id: int):
    """The database row of indexed gallery face `image_id` (path, identity, box), or None.

    Rows of skipped files are never served: their files are the broken ones.
    """
    from indexer.db import INDEXED, PENDING
    record = engine.gallery.image(image_id)
    return record if record is not None and record.status in (INDEXED, PENDING) else None


def gallery_stats(engine) -> dict:
    """Counts, model and index of the gallery (indexer.Gallery.stats), with the rule that
    decides a match at its size now."""
    stats = engine.gallery.stats()
    for part in stats["models"]:        # each model's own rule, for its species' faces
        part["decision"] = engine.match_rule(species=part["species"]).describe()
    return {**stats, "decision": stats["models"][0]["decision"]}


def gallery_summary(engine) -> dict:
    """The public part of the stats: no file system paths."""
    stats = gallery_stats(engine)
    return {"images": stats["images"], "faces": stats["faces"], "identities": stats["identities"],
            "model": stats["model"]["name"], "species": stats["model"]["species"],
            "index_type": stats["index"]["type"], "vectors": stats["index"]["vectors"]}
