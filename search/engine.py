"""The query engine that `search` and the web app share.

`QueryEngine` loads a gallery index, the model it was built with and a face detector once;
then every `query`, `identify` and `verify` call reuses them (thread-safe for reading, so
a web server's threads can share one engine). `FacePipeline` is the model and detector
alone: what `verify` needs, without an index.

A query answers one JSON-ready dict (the `search query --json` output):

    {"image": {"width", "height"}, "model", "species", "threshold", "detector",
     "decision": {"rule": "fpir" | "per-pair", "threshold", "fpir", "individuals", "faces",
                  "confident_within", "operating_point" (per-pair), "message" (old models)},
     "models": [{"model", "species", "threshold", "detector", "decision"}, ...],
     "faces": [{"box": [x0, y0, x1, y1] or None, "score",
                "found_by": "detector" | "box" | "whole image",
                "species", "model", "threshold",
                "identity" (or "unknown"), "distance", "strength", "stranger_rate", "reason",
                "matches": [{"id", "path", "identity", "individual", "distance", "similarity",
                             "match", "strength", "stranger_rate", "box"}, ...]}, ...],
     "message": "no face found ..." (only when there is no face: says to give a box),
     "timings_ms": {"detect", "embed", "search"}}

An index may hold several models, one per species (`indexer build --models human,dog`).
Then every model's detector looks at the photo, each face is embedded by its own species'
model and searched among that species' faces only, and its `match` is decided by that
model's own rule for that species' gallery size (`model.match_rule(individuals, faces,
fpir, threshold)` with the species' own counts). `"models"` lists each model's "model",
"species", "detector", "threshold" and "decision", the index's main (first) model first;
the top-level "model", "species", "threshold", "detector" and "decision" are the main
model's, exactly as in a one-model index (where "models" holds that one entry). Each face
says its "species", "model" and "threshold" (the one its matches were judged by); faces
come model by model, each model's left to right. A spot that two species' detectors both
call a face is one face, the dog's (faces.detectors.shadowed: the human detectors see a
face on some dogs' faces), unless it is a box given, which every model answers (`species`
chooses one). `species` restricts a query to one species' model.

A match's `path` is relative to the gallery folder it was indexed from (the file name alone
for a file added from elsewhere); `absolute_paths=True` gives the full path instead. Names
that are not UTF-8 are shown with \\xNN escapes (faces.errors.readable), as identities are.
Distances are Euclidean between unit embeddings (0 to 2), similarity is their cosine.
`individual` is the id of the individual the gallery face belongs to (null until `indexer
cluster` has run); `identity` is that individual's name when it has been given one.
`match` is distance <= the gallery's threshold (faces.open_set.MatchRule): by default the
one at which 4% of searches by people not in the gallery see any match (at most 5%), for the
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
from faces.detectors import (DETECTOR_SPECIES, Detector, Face, box_inside, concrete_name, get_detector,
                             resolve_detector, shadowed)
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

    def __init__(self, model: FaceModel, detector: str | None = None, among_several: bool = False):
        """`among_several`: one of an index's several models, so a detector named for another
        species' faces (the human 'blazeface' for the dog model) leaves this one its default."""
        self.model = model
        self.among_several = among_several
        self.detector_name = concrete_name(detector, model.species)
        self._detectors: dict[str, Detector] = {}
        self._detectors_lock = threading.Lock()
        self.detector = self.get_detector(self.detector_name)

    def get_detector(self, name: str | None = None) -> Detector:
        """The named detector (None: this pipeline's default), aligning as the model asks."""
        name = self.detector_used(name)
        with self._detectors_lock:
            if name not in self._detectors:
                self._detectors[name] = get_detector(name, self.model.preprocess, self.model.species)
            return self._detectors[name]

    def detector_used(self, name: str | None) -> str:
        """The concrete name of the detector a call with `name` uses (ValueError when unknown)."""
        if name in (None, ""):
            return self.detector_name
        concrete = concrete_name(name, self.model.species)
        if self.among_several and DETECTOR_SPECIES.get(concrete, self.model.species) != self.model.species:
            return self.detector_name
        return concrete

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
    """A gallery index with its model(s) and detector(s), loaded once and reused for every query.

    index: index folder (default: $FACESEARCH_INDEX, else ./facesearch-index).
    model: bundled name or checkpoint path; default the one the index records. Either way
    it must be the very model the index was built with (same sha256); in an index of
    several models it stands for the index's model of its species.
    detector: the default detector of queries; None uses the one the index was built with
    (so a gallery of crops, built with 'none', is queried with crops), 'auto' the species'
    default. Each query may still name another. In an index of several models a detector
    is for the models whose species' faces it finds ('none': all); the others keep theirs.
    """

    def __init__(self, index: str | os.PathLike | None = None, model: str | os.PathLike | None = None,
                 detector: str | None = None, device: str | None = None):
        from indexer.gallery import Gallery
        started = time.perf_counter()
        self.gallery = Gallery.open(index)
        index_loaded = time.perf_counter()
        several = self.gallery.several
        try:
            self.pipelines = []
            for record, face_model in zip(self.gallery.models, self._load_index_models(model, device)):
                chosen = detector
                if several and detector not in (None, "", "auto"):
                    concrete = concrete_name(detector, face_model.species)    # an unknown name fails here
                    if DETECTOR_SPECIES.get(concrete, face_model.species) != face_model.species:
                        chosen = None          # another species' detector: this model keeps its own
                self.pipelines.append(FacePipeline(face_model, resolve_detector(chosen, record.detector,
                                                                                face_model.species),
                                                   among_several=several))
        except BaseException:
            self.gallery.close()
            raise
        self.pipeline = self.pipelines[0]
        self.load_timings_ms = {"index": _ms(index_loaded - started),
                                "model": _ms(time.perf_counter() - index_loaded)}

    @property
    def model(self) -> FaceModel:
        """The index's main model (the only one of a one-model index)."""
        return self.pipeline.model

    @property
    def species(self) -> list[str]:
        """The species the index's models find, the main one first."""
        return [pipeline.model.species for pipeline in self.pipelines]

    def _load_index_models(self, model, device) -> list[FaceModel]:
        loaded = None
        if model is not None:
            loaded = load_model(model, device)
            self.gallery.check_model(loaded)     # another model's embeddings do not compare
        return [loaded if loaded is not None and loaded.species == record.species
                else self.gallery.load_model(device, record.species)
                for record in self.gallery.models]

    def _pipelines(self, species: str | None) -> list[FacePipeline]:
        if species in (None, ""):
            return self.pipelines
        chosen = [p for p in self.pipelines if p.model.species == species]
        if not chosen:
            raise SearchError(f"species {species!r}: this index finds {', '.join(self.species)} faces")
        return chosen

    def match_rule(self, fpir: float | str | None = None, threshold: str | float | None = None,
                   species: str | None = None) -> MatchRule:
        """What decides `match` in this gallery now (faces.checkpoint.FaceModel.match_rule):
        the threshold for `fpir` (default 4%) at the gallery's size, or a per-pair `threshold`.
        `species`: for that species' model and its faces alone (default the main model's;
        in an index of several models each species has its own rule)."""
        pipeline = self._pipelines(species)[0]
        size = self.gallery.size(pipeline.model.species if self.gallery.several else None)
        return pipeline.model.match_rule(size["individuals"], size["faces"], fpir, threshold)

    def query(self, source: Source, k: int = 10, name: str | None = None,
              threshold: str | float | None = None, absolute_paths: bool = False, box=None,
              fpir: float | str | None = None, detector: str | None = None, species: str | None = None) -> dict:
        """The k nearest gallery faces of every face in the photo (or of the one face in
        `box`). `match` is decided by the gallery's rule (match_rule): at most `fpir` of the
        searches by people not in the gallery see any match (default 4%), or, given
        `threshold` (strict, balanced or a distance), per pair. `detector` finds the faces
        (default the engine's: the index's own). In an index of several models every
        model's detector looks at the photo and each face is searched among its own
        species' faces with its own model's rule (`species`: only that one's)."""
        if k < 1:
            raise SearchError(f"k must be at least 1 (got {k})")
        pipelines = self._pipelines(species)
        rules = [self.match_rule(fpir, threshold, p.model.species) for p in pipelines]   # bad values fail first
        try:
            used = [p.detector_used(detector) for p in pipelines]
        except ValueError as error:
            raise SearchError(str(error)) from None
        image = source if isinstance(source, Image.Image) or len(pipelines) == 1 else load_image(source, name=name)
        faces, timings = [], {"detect": 0.0, "embed": 0.0, "search": 0.0}
        for pipeline, rule, detector_name in zip(pipelines, rules, used):
            photo = pipeline.read(image, name, box, detector_name)
            started = time.perf_counter()
            kind = pipeline.model.species
            hits = (self.gallery.search(photo.embeddings, k, kind if self.gallery.several else None)
                    if photo.faces else [])
            photo.timings_ms["search"] = _ms(time.perf_counter() - started)
            for key in timings:
                timings[key] = round(timings[key] + photo.timings_ms[key], 2)
            for face, face_hits in zip(photo.faces, hits):
                answer = {"box": list(face.box) if face.box else None, "score": face.score,
                          "found_by": face.found_by, "species": kind, "model": pipeline.model.name,
                          "threshold": rule.threshold,
                          "matches": [self._match(hit, rule, absolute_paths) for hit in face_hits]}
                answer.update(decide(answer["matches"]))
                faces.append(answer)
        if len(pipelines) > 1:
            # One spot found by two species' detectors is one face (faces.detectors.shadowed),
            # as the build decided for the gallery; a box given is answered by every model.
            hidden = shadowed([(f["species"], f["box"] if f["found_by"] == "detector" else None) for f in faces])
            faces = [face for face, hide in zip(faces, hidden) if not hide]
        result = {
            "image": {"width": photo.width, "height": photo.height},
            "model": pipelines[0].model.name, "species": pipelines[0].model.species, "threshold": rules[0].threshold,
            "decision": rules[0].describe(), "detector": used[0],
            "models": [{"model": p.model.name, "species": p.model.species, "threshold": rule.threshold,
                        "decision": rule.describe(), "detector": detector_name}
                       for p, rule, detector_name in zip(pipelines, rules, used)],
            "faces": faces,
            "timings_ms": timings,
        }
        if not faces:
            result["message"] = no_face_message(_label(source, name), [p.model.species for p in pipelines], used)
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
                 fpir: float | str | None = None, detector: str | None = None, species: str | None = None) -> dict:
        """The query itself: every face's answer (`decide`) is already in it. Kept as its own
        call for `search identify` and the clients that name it."""
        return self.query(source, k, name, threshold, absolute_paths, box, fpir, detector, species)

    def verify(self, a: Source, b: Source, names: tuple[str | None, str | None] = (None, None),
               threshold: str | float | None = None, boxes: tuple = (None, None),
               species: str | None = None) -> dict:
        """1:1, with the main model (or the index's model of `species`)."""
        return self._pipelines(species)[0].verify(a, b, names, threshold, boxes)


def no_face_message(label: str, species: str | list[str], detector: str | list[str]) -> str:
    """What to tell a user whose photo shows no face: what was looked for, and what to do
    (`species` and `detector`: one, or a list for an index of several models)."""
    kinds = [species] if isinstance(species, str) else list(species)
    detectors = [detector] if isinstance(detector, str) else list(detector)
    if len(kinds) == 1:
        face = "dog face" if kinds[0] == "dog" else "face"
        looked = f"detector {detectors[0]}"
    else:
        face = " or ".join(kinds) + " face"
        looked = "detectors " + ", ".join(detectors)
    return (f"no {face} found in {label} ({looked}); if there is one, give its box "
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
