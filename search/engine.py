"""The query engine that `search` and the web app share.

`QueryEngine` loads a gallery index, the model it was built with and a face detector once;
then every `query`, `identify` and `verify` call reuses them (thread-safe for reading, so
a web server's threads can share one engine). `FacePipeline` is the model and detector
alone: what `verify` needs, without an index.

A query answers one JSON-ready dict (the `search query --json` output):

    {"image": {"width", "height"}, "model", "species", "threshold", "detector",
     "decision": {"rule": "fpir" | "per-pair", "threshold", "fpir", "individuals", "faces",
                  "confident_within", "operating_point" (per-pair), "message" (old models)},
     "faces": [{"box": [x0, y0, x1, y1] or None, "score",
                "found_by": "detector" | "box" | "whole image",
                "identity" (or "unknown"), "distance", "strength", "stranger_rate", "reason",
                "matches": [{"id", "path", "identity", "individual", "distance", "similarity",
                             "match", "strength", "stranger_rate", "box"}, ...]}, ...],
     "message": "no face found ..." (only when there is no face: says to give a box),
     "timings_ms": {"detect", "embed", "search"}}

A match's `path` is relative to the gallery folder it was indexed from (the file name alone
for a file added from elsewhere); `absolute_paths=True` gives the full path instead. Names
that are not UTF-8 are shown with \\xNN escapes (faces.errors.readable), as identities are.
Distances are Euclidean between unit embeddings (0 to 2), similarity is their cosine.
`individual` is the id of the individual the gallery face belongs to (null until `indexer
cluster` has run); `identity` is that individual's name when it has been given one.
`match` is distance <= the gallery's threshold (faces.open_set.MatchRule): by default the
one at which at most 5% of searches by people not in the gallery see any match, for the
number of individuals the gallery holds now; `stranger_rate` is the share of such searches
that would see a face this near, `strength` its wording (confident, possible, no match).
Each face's answer (`decide`) is the nearest gallery face's identity when it is a match:
`search identify`, the badges and the web page's "Best match" are one rule. `verify`
answers {"same", "distance", "similarity", "threshold", "operating_point", "model",
"species", "detector", "a": {"path", "box", "faces"}, "b": {...}}: a 1:1 comparison, per pair.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from faces.checkpoint import DEFAULT_MODEL, FaceModel, load_model
from faces.detectors import Detector, Face, box_inside, concrete_name, get_detector, resolve_detector
from faces.errors import readable
from faces.imaging import load_image
from faces.open_set import MatchRule

from .errors import SearchError

Source = str | os.PathLike | bytes | Image.Image


@dataclass
class Photo:
    """A photo's faces and their embeddings (row i belongs to faces[i])."""

    width: int
    height: int
    faces: list[Face]
    embeddings: np.ndarray
    timings_ms: dict = field(default_factory=dict)


class FacePipeline:
    """A model and its face detector: photo in, faces and embeddings out.

    `detector` is the default ('auto' or None: the species' own); each call may name
    another, made once and kept (a web server's threads share them)."""

    def __init__(self, model: FaceModel, detector: str | None = None):
        self.model = model
        self.detector_name = concrete_name(detector, model.species)
        self._detectors: dict[str, Detector] = {}
        self._detectors_lock = threading.Lock()
        self.detector = self.get_detector(self.detector_name)

    def get_detector(self, name: str | None = None) -> Detector:
        """The named detector (None: this pipeline's default), aligning as the model asks."""
        name = self.detector_name if name in (None, "") else concrete_name(name, self.model.species)
        with self._detectors_lock:
            if name not in self._detectors:
                self._detectors[name] = get_detector(name, self.model.preprocess, self.model.species)
            return self._detectors[name]

    def detector_used(self, name: str | None) -> str:
        """The concrete name of the detector a call with `name` uses (ValueError when unknown)."""
        return self.detector_name if name in (None, "") else concrete_name(name, self.model.species)

    @classmethod
    def load(cls, model: str | os.PathLike = DEFAULT_MODEL, detector: str | None = None,
             device: str | None = None) -> "FacePipeline":
        return cls(load_model(model, device), detector)

    def read(self, source: Source, name: str | None = None, box=None, detector: str | None = None) -> Photo:
        """The photo's faces and embeddings: those the detector finds (`detector`: a name,
        default this pipeline's), or, given a `box` (x0, y0, x1, y1 in the photo's pixels),
        the one face in it."""
        finder = self.get_detector(detector)
        image = source if isinstance(source, Image.Image) else load_image(source, name=name)
        started = time.perf_counter()
        if box is not None:
            try:
                faces = [finder.in_box(image, box_inside(box, image.size))]
            except ValueError as error:
                raise SearchError(f"{_label(source, name)}: {error}") from None
        else:
            faces = finder(image)
        detected = time.perf_counter()
        embeddings = self.model.embed_images([face.image for face in faces])
        embedded = time.perf_counter()
        return Photo(image.width, image.height, faces, embeddings,
                     {"detect": _ms(detected - started), "embed": _ms(embedded - detected)})

    def operating_point(self, threshold: str | float | None = None) -> tuple[float, dict]:
        """(distance threshold, {"name", "tar", "far"}) of an operating point name or number
        (faces.checkpoint.FaceModel.operating_point); None is the default, strict."""
        point = self.model.operating_point(threshold)
        return point.pop("threshold"), point

    def verify(self, a: Source, b: Source, names: tuple[str | None, str | None] = (None, None),
               threshold: str | float | None = None, boxes: tuple = (None, None)) -> dict:
        """Same individual or not: the most prominent face of each photo (or the face in
        its box, when given), compared."""
        limit, point = self.operating_point(threshold)
        sides = [self._main_face(source, _label(source, name), box)
                 for source, name, box in zip((a, b), names, boxes)]
        (embedding_a, summary_a), (embedding_b, summary_b) = sides
        similarity = float(embedding_a @ embedding_b)
        distance = float(np.sqrt(max(0.0, 2.0 - 2.0 * similarity)))
        return {"same": distance <= limit, "distance": distance, "similarity": similarity,
                "threshold": limit, "operating_point": point,
                "model": self.model.name, "species": self.model.species,
                "detector": self.detector_name, "a": summary_a, "b": summary_b}

    def _main_face(self, source: Source, label: str, box=None) -> tuple[np.ndarray, dict]:
        """The embedding of the photo's largest face (or of the face in `box`), and where it was found."""
        photo = self.read(source, label, box)
        if not photo.faces:
            raise SearchError(f"{label}: no face found (detector {self.detector_name}; give its box with "
                              f"--box-a/--box-b, or, for a photo that is already a face crop, use the "
                              f"'none' detector)")
        i = max(range(len(photo.faces)), key=lambda n: _area(photo.faces[n].box, photo))
        face = photo.faces[i]
        return photo.embeddings[i], {"path": label, "box": list(face.box) if face.box else None,
                                     "found_by": face.found_by, "faces": len(photo.faces)}


class QueryEngine:
    """A gallery index with its model and detector, loaded once and reused for every query.

    index: index folder (default: $FACESEARCH_INDEX, else ./facesearch-index).
    model: bundled name or checkpoint path; default the one the index records. Either way
    it must be the very model the index was built with (same sha256).
    detector: the default detector of queries; None uses the one the index was built with
    (so a gallery of crops, built with 'none', is queried with crops), 'auto' the species'
    default. Each query may still name another.
    """

    def __init__(self, index: str | os.PathLike | None = None, model: str | os.PathLike | None = None,
                 detector: str | None = None, device: str | None = None):
        from indexer.gallery import Gallery
        started = time.perf_counter()
        self.gallery = Gallery.open(index)
        index_loaded = time.perf_counter()
        face_model = self._load_index_model(model, device)
        self.pipeline = FacePipeline(face_model, resolve_detector(detector, self.gallery.detector,
                                                                  face_model.species))
        self.load_timings_ms = {"index": _ms(index_loaded - started),
                                "model": _ms(time.perf_counter() - index_loaded)}

    @property
    def model(self) -> FaceModel:
        return self.pipeline.model

    def _load_index_model(self, model, device) -> FaceModel:
        if model is None:
            return self.gallery.load_model(device)
        loaded = load_model(model, device)
        self.gallery.check_model(loaded)     # another model's embeddings do not compare
        return loaded

    def match_rule(self, fpir: float | str | None = None, threshold: str | float | None = None) -> MatchRule:
        """What decides `match` in this gallery now (faces.checkpoint.FaceModel.match_rule):
        the threshold for `fpir` (default 5%) at the gallery's size, or a per-pair `threshold`."""
        size = self.gallery.size()
        return self.model.match_rule(size["individuals"], size["faces"], fpir, threshold)

    def query(self, source: Source, k: int = 10, name: str | None = None,
              threshold: str | float | None = None, absolute_paths: bool = False, box=None,
              fpir: float | str | None = None, detector: str | None = None) -> dict:
        """The k nearest gallery faces of every face in the photo (or of the one face in
        `box`). `match` is decided by the gallery's rule (match_rule): at most `fpir` of the
        searches by people not in the gallery see any match (default 5%), or, given
        `threshold` (strict, balanced or a distance), per pair. `detector` finds the faces
        (default the engine's: the index's own)."""
        if k < 1:
            raise SearchError(f"k must be at least 1 (got {k})")
        rule = self.match_rule(fpir, threshold)   # a bad value fails before any work
        try:
            used = self.pipeline.detector_used(detector)
        except ValueError as error:
            raise SearchError(str(error)) from None
        photo = self.pipeline.read(source, name, box, used)
        started = time.perf_counter()
        hits = self.gallery.search(photo.embeddings, k) if photo.faces else []
        photo.timings_ms["search"] = _ms(time.perf_counter() - started)
        result = {
            "image": {"width": photo.width, "height": photo.height},
            "model": self.model.name, "species": self.model.species, "threshold": rule.threshold,
            "decision": rule.describe(), "detector": used,
            "faces": [{"box": list(face.box) if face.box else None, "score": face.score,
                       "found_by": face.found_by,
                       "matches": [self._match(hit, rule, absolute_paths) for hit in face_hits]}
                      for face, face_hits in zip(photo.faces, hits)],
            "timings_ms": photo.timings_ms,
        }
        for face in result["faces"]:
            face.update(decide(face["matches"]))
        if not photo.faces:
            result["message"] = no_face_message(_label(source, name), self.model.species, used)
        return result

    def _match(self, hit: dict, rule: MatchRule, absolute_path: bool) -> dict:
        distance = float(hit["distance"])
        path = hit["path"] if absolute_path else self.gallery.relative_path(hit["path"])
        return {"id": int(hit["id"]), "path": readable(path),
                "identity": readable(hit["identity"]) if hit["identity"] is not None else None,
                "individual": hit.get("individual"), "distance": distance, "similarity": float(hit["similarity"]),
                **rule.judge(distance),
                "box": list(hit["box"]) if hit.get("box") is not None else None}

    def identify(self, source: Source, k: int = 10, name: str | None = None,
                 threshold: str | float | None = None, absolute_paths: bool = False, box=None,
                 fpir: float | str | None = None, detector: str | None = None) -> dict:
        """The query itself: every face's answer (`decide`) is already in it. Kept as its own
        call for `search identify` and the clients that name it."""
        return self.query(source, k, name, threshold, absolute_paths, box, fpir, detector)

    def verify(self, a: Source, b: Source, names: tuple[str | None, str | None] = (None, None),
               threshold: str | float | None = None, boxes: tuple = (None, None)) -> dict:
        return self.pipeline.verify(a, b, names, threshold, boxes)


def no_face_message(label: str, species: str, detector: str) -> str:
    """What to tell a user whose photo shows no face: what was looked for, and what to do."""
    face = "dog face" if species == "dog" else "face"
    return (f"no {face} found in {label} (detector {detector}); if there is one, give its box "
            f"(search query --box x0,y0,x1,y1, or draw it on the web page)")


UNKNOWN = "unknown"


def decide(matches: list[dict]) -> dict:
    """Open-set identification from a face's gallery neighbours (nearest first, each judged
    by the gallery's MatchRule): the identity of the nearest gallery face when it is a
    match, else "unknown". The nearest-neighbour rule: it is what `match` already says, so
    the name and the badges never disagree, and its threshold is the one the model's
    stranger statistics calibrate at any gallery size (bench/open_set.py compares others)."""
    if not matches or not matches[0]["match"]:
        return {"identity": UNKNOWN, "distance": matches[0]["distance"] if matches else None,
                "strength": "no match", "stranger_rate": matches[0].get("stranger_rate") if matches else None,
                "reason": "no gallery face within the threshold" if matches else "the gallery is empty"}
    nearest = matches[0]
    answer = {"identity": nearest["identity"], "distance": nearest["distance"],
              "strength": nearest["strength"], "stranger_rate": nearest.get("stranger_rate")}
    if nearest["identity"] is None:
        answer.update(identity=UNKNOWN, reason="the gallery face it matches has no identity")
    return answer


def _label(source: Source, name: str | None) -> str:
    if name:
        return readable(name)
    return readable(source) if isinstance(source, (str, os.PathLike)) else "the photo"


def _area(box, photo: Photo) -> int:
    x0, y0, x1, y1 = box or (0, 0, photo.width, photo.height)
    return (x1 - x0) * (y1 - y0)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)
