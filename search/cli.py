"""`search`: find the gallery faces that match the faces in a photo.

Only click and the shared CLI helpers are imported here; the engine (torch, FAISS) is
imported by the commands that need it, so `search --help` stays quick.
"""
from __future__ import annotations

import logging

import click

from faces.clitools import Count, FriendlyGroup, print_json, setup_logging
from faces.detection import DETECTOR_HELP, DETECTORS
from faces.errors import readable

INDEX_HELP = "Index folder (default: $FACESEARCH_INDEX, else ./facesearch-index)."
MODEL_HELP = ("Model name (human, dog) or checkpoint path. Default: the model the index was "
              "built with; another one is refused.")

index_option = click.option("--index", type=click.Path(file_okay=False), help=INDEX_HELP)
model_option = click.option("--model", help=MODEL_HELP)
detector_option = click.option("--detector", type=click.Choice(list(DETECTORS)), help=DETECTOR_HELP)
k_option = click.option("-k", "--k", "k", default=10, show_default=True, type=Count(1),
                        help="Gallery neighbours per face.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
absolute_paths_option = click.option("--absolute-paths", is_flag=True,
                                     help="Show gallery files by their full path (default: relative to "
                                          "the gallery folder they were indexed from).")


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"],
                                                    "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Log debugging detail.")
def main(verbose: bool) -> None:
    """Reverse image search for faces (human and dog) in a gallery index built by `indexer`.

    Each face found in the photo is searched separately. Human faces are found and aligned
    by a detector; no dog face detector ships, so for dogs the whole photo is taken as the
    face: crop it to the dog's face first.
    """
    setup_logging(verbose)
    if not verbose:
        logging.getLogger("alembic").setLevel(logging.WARNING)   # the index's start-up chatter
        logging.getLogger("faiss").setLevel(logging.WARNING)


@main.command()
@click.argument("photo", type=click.Path())
@k_option
@index_option
@model_option
@detector_option
@absolute_paths_option
@json_option
def query(photo, k, index, model, detector, absolute_paths, as_json) -> None:
    """The K nearest gallery faces of every face in PHOTO, and whether each is within the
    model's verification threshold (a match)."""
    engine, image = _open(photo, index, model, detector)
    result = engine.query(image, k=k, name=photo, absolute_paths=absolute_paths)
    if as_json:
        print_json(result)
        return
    _echo_header(photo, result)
    for number, face in enumerate(result["faces"], 1):
        click.echo(f"\nface {number}  box {_box(face['box'])}")
        click.echo(f"  {'rank':>4}  {'distance':>8}  {'similarity':>10}  {'match':<5}  "
                   f"{'identity':<24}  path")
        for rank, m in enumerate(face["matches"], 1):
            click.echo(f"  {rank:>4}  {m['distance']:>8.3f}  {m['similarity']:>10.3f}  "
                       f"{'yes' if m['match'] else 'no':<5}  {str(m['identity']):<24}  {m['path']}")


@main.command()
@click.argument("photo", type=click.Path())
@k_option
@index_option
@model_option
@detector_option
@absolute_paths_option
@json_option
def identify(photo, k, index, model, detector, absolute_paths, as_json) -> None:
    """Who is in PHOTO: for each face, the identity most of its K nearest gallery faces
    within the threshold vote for, or "unknown" when none is within it."""
    engine, image = _open(photo, index, model, detector)
    result = engine.identify(image, k=k, name=photo, absolute_paths=absolute_paths)
    if as_json:
        print_json(result)
        return
    _echo_header(photo, result)
    for number, face in enumerate(result["faces"], 1):
        if face["votes"]:
            verdict = (f"{face['identity']}  ({face['votes']} of {face['voters']} neighbours within "
                       f"the threshold agree; nearest distance {face['distance']:.3f})")
        else:
            verdict = f"unknown  (no gallery face within distance {result['threshold']:.3f})"
        click.echo(f"face {number}  box {_box(face['box'])}: {verdict}")


@main.command()
@click.argument("photo_a", type=click.Path())
@click.argument("photo_b", type=click.Path())
@click.option("--model", default="human", show_default=True,
              help="Model name (human, dog) or checkpoint path.")
@detector_option
@json_option
def verify(photo_a, photo_b, model, detector, as_json) -> None:
    """Whether PHOTO_A and PHOTO_B show the same individual (the largest face of each).
    Needs no index."""
    from faces.imaging import load_image
    images = load_image(photo_a), load_image(photo_b)   # bad files fail before the model loads
    from .engine import FacePipeline
    _one_torch_thread()
    result = FacePipeline.load(model, detector).verify(*images, names=(photo_a, photo_b))
    if as_json:
        print_json(result)
        return
    verdict = "same" if result["same"] else "different"
    relation = "<=" if result["same"] else ">"
    click.echo(f"{verdict}: distance {result['distance']:.3f} {relation} threshold "
               f"{result['threshold']:.3f} (model {result['model']})")


@main.command()
@index_option
@model_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--threads", default=4, show_default=True, type=click.IntRange(min=1),
              help="Request threads; they share one loaded engine.")
def serve(index, model, host, port, threads) -> None:
    """Start the web page and JSON API under waitress (a production WSGI server).

    It answers only requests for the host names in $FACESEARCH_ALLOWED_HOSTS (default: HOST
    and localhost) and, when $FACESEARCH_API_KEY is set, only those that send that key."""
    import waitress
    from web import create_app
    from web.security import is_loopback
    _one_torch_thread()    # the request threads are the parallelism
    overrides = {key: value for key, value in (("INDEX", index), ("MODEL", model)) if value}
    app = create_app({**overrides, "BIND_HOST": host})
    if not is_loopback(host) and not app.config["API_KEY"]:
        click.echo(f"warning: listening on {host}, beyond this machine, without an API key: anyone who "
                   "can reach it can search the gallery; set FACESEARCH_API_KEY", err=True)
    click.echo(f"facesearch on http://{host}:{port}/ for host names {', '.join(app.config['ALLOWED_HOSTS'])} "
               "(Ctrl-C stops it)", err=True)
    # ident="": no Server header announcing waitress.
    waitress.serve(app, host=host, port=port, threads=threads, ident="")


def _open(photo, index, model, detector):
    """The photo, read first so a bad file fails before seconds of loading, and the engine."""
    from faces.imaging import load_image
    image = load_image(photo)
    from .engine import QueryEngine
    _one_torch_thread()
    return QueryEngine(index, model=model, detector=detector), image


def _one_torch_thread() -> None:
    """A query embeds a few faces at once: torch's intra-op threads gain little there and
    stall badly when another process holds a core (6 faces on the shared 2-core machine:
    20 ms on one thread, 600-1100 ms on two)."""
    import torch
    torch.set_num_threads(1)


def _echo_header(photo, result) -> None:
    faces = len(result["faces"])
    if not faces:
        click.echo(result["message"])
        return
    click.echo(f"{readable(photo)}: {faces} face{'s' * (faces != 1)} (model {result['model']}, detector "
               f"{result['detector']}; a match is distance <= {result['threshold']:.3f})")


def _box(box) -> str:
    return "whole image" if box is None else "(" + ", ".join(str(v) for v in box) + ")"
