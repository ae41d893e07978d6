"""The pages people see: the search page, the status page and gallery thumbnails."""
from __future__ import annotations

import os

from flask import Blueprint, abort, current_app, render_template, request

from faces.imaging import ImageError

from .engine import EngineUnavailable, gallery_image, gallery_stats, get_engine, indexed_model
from .thumbnails import PHOTO_PIXELS, thumbnail_jpeg

blueprint = Blueprint("pages", __name__)

# How the page names one and many of what an index holds (search.js reads it from the page).
SPECIES_WORDS = {"human": ["person", "people"], "dog": ["dog", "dogs"], "other": ["individual", "individuals"]}
# The detectors the page offers for each species, and how it names them.
DETECTOR_CHOICES = {"human": ["blazeface", "hog", "none"], "dog": ["dog", "none"]}
DETECTOR_NAMES = {"blazeface": "the BlazeFace face detector", "hog": "the HOG face detector", "dog": "the dog face detector",
                  "none": "the whole photo as the face"}


@blueprint.get("/")
def index():
    config = current_app.config
    model = indexed_model()
    choices = DETECTOR_CHOICES.get(model["species"], ["none"]) if model else []
    words = tuple(SPECIES_WORDS.get(model["species"], SPECIES_WORDS["other"])) if model else ("", "")
    default_label = DETECTOR_NAMES.get(model["detector"], model["detector"]) if model else ""
    parts = (model or {}).get("models") or []
    if len(parts) > 1:
        # An index of several models: each kind of face is found by its own detector; the
        # choice offered is for the main model's kind (the others keep theirs).
        said = [SPECIES_WORDS.get(p["species"], SPECIES_WORDS["other"]) for p in parts]
        words = (" or ".join(w[0] for w in said), " and ".join(w[1] for w in said))
        default_label = ", ".join(f"{DETECTOR_NAMES.get(p['detector'], p['detector'])} for "
                                  f"{SPECIES_WORDS.get(p['species'], SPECIES_WORDS['other'])[1]}" for p in parts)
    return render_template("search.html", max_upload_bytes=config["MAX_UPLOAD_BYTES"],
                           max_upload_mb=config["MAX_UPLOAD_MB"], default_k=config["DEFAULT_K"],
                           max_k=config["MAX_K"], model=model, species_words=SPECIES_WORDS, words=words,
                           default_detector_label=default_label,
                           detector_choices=choices, detector_names=DETECTOR_NAMES)


@blueprint.get("/people")
def people():
    """People & pets: the individuals as a grid of cover faces (filled in by people.js)."""
    return render_template("people.html", model=indexed_model(), species_words=SPECIES_WORDS)


@blueprint.get("/people/<int:individual_id>")
def individual(individual_id: int):
    """One individual's faces with their photos: rename, move a face out, forget."""
    return render_template("individual.html", individual_id=individual_id, model=indexed_model(),
                           species_words=SPECIES_WORDS)


@blueprint.get("/status")
def status():
    try:
        engine = get_engine()
    except EngineUnavailable as error:
        return render_template("status.html", stats=None, problem=str(error)), 503
    return render_template("status.html", stats=gallery_stats(engine), problem=None,
                           detector=engine.pipeline.detector_name)


@blueprint.get("/thumb/<int:image_id>")
def thumbnail(image_id: int):
    """The thumbnail of gallery image `image_id`; its file path comes from the database."""
    return _gallery_jpeg(image_id, whole=False)


@blueprint.get("/photo/<int:image_id>")
def photo(image_id: int):
    """The whole photo a gallery face was found in, at most PHOTO_PIXELS on its long side."""
    return _gallery_jpeg(image_id, whole=True)


def _gallery_jpeg(image_id: int, whole: bool):
    row = gallery_image(get_engine(), image_id)
    if row is None:
        abort(404, f"no gallery image {image_id}")
    try:
        modified_ns = os.stat(row.path).st_mtime_ns
        jpeg = (thumbnail_jpeg(row.path, modified_ns, None, PHOTO_PIXELS) if whole
                else thumbnail_jpeg(row.path, modified_ns, row.box))
    except (OSError, ImageError):
        abort(404, f"gallery image {image_id} is no longer readable")
    response = current_app.response_class(jpeg, mimetype="image/jpeg")
    response.cache_control.public = True
    response.cache_control.max_age = 3600
    response.add_etag()
    return response.make_conditional(request)

