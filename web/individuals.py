"""The JSON API of individuals (the "People & pets" pages use it):

    GET    /api/individuals?species=&offset=&limit=   largest first, paged
    GET    /api/individuals/ID                         one, with its faces
    POST   /api/individuals/ID        {"name": "Rex"}  name it (null removes the name)
    POST   /api/individuals/merge     {"ids": [3, 9]}  merge into the first (one species)
    POST   /api/individuals/ID/split  {"faces": [41]}  move faces out into a new individual
    DELETE /api/individuals/ID                         forget it: its faces leave the index

Reading follows the API's rules (the key when one is set, security.py); changing needs
the key whenever one is configured, and a JSON body (a form on another site cannot send
one without the browser asking this server first). Merge, split and forget take the index's
writer lock: while `indexer build` runs they are refused with 409 and nothing changes.
"""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request
from werkzeug.exceptions import BadRequest, Conflict, NotFound, UnsupportedMediaType

from faces.clitools import whole_number
from faces.errors import readable
from indexer.errors import IndexBusyError, IndividualError, IndividualNotFound

from .engine import get_engine

blueprint = Blueprint("individuals", __name__, url_prefix="/api/individuals")

PAGE_SIZE = 48
MAX_PAGE_SIZE = 200


def _answer(change):
    """Run a change, its errors as 400 (bad request), 404 (no such individual), 409 (busy)."""
    try:
        return change()
    except IndividualNotFound as error:
        raise NotFound(str(error)) from None
    except IndividualError as error:
        raise BadRequest(str(error)) from None
    except IndexBusyError:
        raise Conflict("the index is being changed (a build or another change is running); nothing was "
                       "changed: try again when it has finished") from None


def _body() -> dict:
    if not request.is_json:
        raise UnsupportedMediaType("send a JSON object with Content-Type: application/json")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("the body is not a JSON object")
    return body


def _public(individual: dict) -> dict:
    """An individual as the API shows it: names escaped by JSON, paths relative to the gallery."""
    gallery = get_engine().gallery
    shown = {key: value for key, value in individual.items() if key != "face_list"}
    if "face_list" in individual:
        shown["faces_list"] = [{"id": face["id"], "path": readable(gallery.relative_path(face["path"])),
                                "identity": readable(face["identity"]) if face["identity"] is not None else None,
                                "box": face["box"]} for face in individual["face_list"]]
    return shown


def _count(name: str, default: int, largest: int) -> int:
    text = request.args.get(name)
    if text is None or text == "":
        return default
    number = whole_number(text)
    if number is None or number > largest:
        raise BadRequest(f"{name} must be a whole number from 0 to {largest}")
    return number


@blueprint.get("")
def listing():
    from indexer.individuals import list_individuals
    limit = _count("limit", PAGE_SIZE, MAX_PAGE_SIZE) or PAGE_SIZE
    offset = _count("offset", 0, 2 ** 62)
    species = request.args.get("species") or None
    result = list_individuals(get_engine().gallery.engine, species, offset, limit)
    result["individuals"] = [_public(i) for i in result["individuals"]]
    return jsonify(result)


@blueprint.get("/<int:individual_id>")
def one(individual_id: int):
    from indexer.individuals import get_individual
    return jsonify(_public(_answer(lambda: get_individual(get_engine().gallery.engine, individual_id))))


@blueprint.post("/<int:individual_id>")
def rename(individual_id: int):
    from indexer.individuals import rename as rename_individual
    body = _body()
    if "name" not in body:
        raise BadRequest('send {"name": "..."} (null removes the name)')
    engine = get_engine().gallery.engine
    return jsonify(_public(_answer(lambda: rename_individual(engine, individual_id, body["name"]))))


def _locked(change, *args):
    """A change with the index's writer lock held (refused at once while a build runs)."""
    from indexer.lock import IndexLock
    gallery = get_engine().gallery
    with IndexLock(gallery.index_dir):
        return change(gallery.engine, *args)


@blueprint.post("/merge")
def merge():
    from indexer.individuals import merge as merge_individuals
    ids = _body().get("ids")
    return jsonify(_public(_answer(lambda: _locked(merge_individuals, ids))))


@blueprint.post("/<int:individual_id>/split")
def split(individual_id: int):
    from indexer.individuals import split as split_individual
    faces = _body().get("faces")
    return jsonify(_public(_answer(lambda: _locked(split_individual, individual_id, faces))))


@blueprint.delete("/<int:individual_id>")
def forget(individual_id: int):
    from indexer.writer import IndexWriter
    gallery = get_engine().gallery

    def run():
        with IndexWriter(gallery.index_dir, progress=False) as writer:
            return writer.forget(individual_id)
    report = _answer(run)
    return jsonify(forgotten=individual_id, faces_removed=report.removed, vectors=report.vectors)
