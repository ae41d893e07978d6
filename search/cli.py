"""`search`: find the gallery faces that match the faces in a photo.

Only click and the shared CLI helpers are imported here; the engine (torch, FAISS) is
imported by the commands that need it, so `search --help` stays quick.
"""
from __future__ import annotations

import logging

import click

from faces import clitools
from faces.clitools import Count, FriendlyGroup, print_json, setup_logging
from faces.detectors import DETECTOR_HELP, DETECTORS
from faces.errors import readable
from faces.imaging import ImageError
from faces.thresholds import DEFAULT_OPERATING_POINT, PER_PAIR_THRESHOLD_HELP, THRESHOLD_HELP

INDEX_HELP = "Index folder (default: $FACESEARCH_INDEX, else ./facesearch-index)."
MODEL_HELP = ("Model name (human, dog) or checkpoint path. Default: the model the index was "
              "built with; another one is refused.")

index_option = click.option("--index", type=click.Path(file_okay=False), help=INDEX_HELP)
model_option = click.option("--model", help=MODEL_HELP)
detector_option = click.option("--detector", type=click.Choice(list(DETECTORS)),
                               help=DETECTOR_HELP + " Default: the one the index was built with "
                                                    "(verify: auto); the answer says which was used.")
k_option = click.option("-k", "--k", "k", default=10, show_default=True, type=Count(1),
                        help="Gallery neighbours per face.")
threshold_option = click.option("--threshold", default=DEFAULT_OPERATING_POINT, show_default=True,
                                help=THRESHOLD_HELP)
# Searches decide by the share of stranger searches (faces.open_set); a per-pair threshold
# only when asked for. Help text without importing numpy: the default is faces.open_set's.
fpir_option = click.option("--fpir", metavar="RATE",
                           help="Share of searches by people NOT in the gallery that may name someone or "
                                "show any match (false positive identification rate), between 0 and 1; "
                                "default 0.04 (aimed below 5% so that at most 5% hold on people the calibration "
                                "never saw). The distance threshold follows the gallery's size.")
search_threshold_option = click.option("--threshold", help=PER_PAIR_THRESHOLD_HELP)
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
lines_option = click.option("--json", "as_json", is_flag=True,
                            help='Print one JSON object per line, one per photo, each with a "photo" '
                                 'field (the path as given); a photo that fails gives '
                                 '{"photo", "error"}.')
# A browser opens up to 6 connections to a server and fetches a page's thumbnails over all
# of them: 6 threads for those, and 2 more so a search or a second tab does not queue behind.
SERVE_THREADS = 8
photos_argument = click.argument("photos", nargs=-1, required=True, type=click.Path())


class Trouble(click.ClickException):
    """An error in a command whose exit status 1 has another meaning (verify: different)."""

    exit_code = 2


box_option = click.option("--box", metavar="X0,Y0,X1,Y1",
                          help="Search the face in this box (pixels of the photo: left, top, right, "
                               "bottom) instead of the faces the detector finds: for a face it "
                               "missed, or to choose one. Applies to every photo given.")
species_option = click.option("--species", metavar="SPECIES",
                              help="In an index of several models (indexer build --models human,dog): "
                                   "look for this species' faces only (default: every species'); with "
                                   "--box, which model's face the box holds.")
absolute_paths_option = click.option("--absolute-paths", is_flag=True,
                                     help="Show gallery files by their full path (default: relative to "
                                          "the gallery folder they were indexed from).")


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"],
                                                    "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Log debugging detail.")
def main(verbose: bool) -> None:
    """Reverse image search for faces (human and dog) in a gallery index built by `indexer`.

    Each face found in the photo is searched separately, found by the detector the index
    was built with unless --detector names another (human faces: 'blazeface' or 'hog'; dog faces:
    facesearch's own 'dog'; 'none': the photo is the face); --box X0,Y0,X1,Y1 searches the
    face in a box you give instead. A photo without a face says so.
    """
    setup_logging(verbose)
    if not verbose:
        logging.getLogger("alembic").setLevel(logging.WARNING)   # the index's start-up chatter
        logging.getLogger("faiss").setLevel(logging.WARNING)


@main.command()
@photos_argument
@k_option
@fpir_option
@search_threshold_option
@index_option
@model_option
@detector_option
@absolute_paths_option
@box_option
@species_option
@click.option("--server", metavar="URL",
              help="Ask a running `search serve` at URL (e.g. http://127.0.0.1:8000) instead of "
                   "loading the model and index here: no start-up cost per call. Sends "
                   "$FACESEARCH_API_KEY when set; the server's index and model answer, with its "
                   "detector unless --detector names another.")
@lines_option
def query(photos, k, fpir, threshold, index, model, detector, absolute_paths, box, species, server,
          as_json) -> None:
    """The K nearest gallery faces of every face in each of PHOTOS (files, or folders of
    images), and whether each is a match: as near as at most --fpir of strangers' searches
    come in a gallery of this size (confident: a tenth of that).
    Exit status 0 when every photo was searched, 1 when any could not be."""
    def show(photo, result):
        _echo_header(photo, result)
        for number, face in enumerate(result["faces"], 1):
            click.echo(f"\nface {number}{_kind(result, face)}  box {_box(face['box'])}  ({_found_by(face)}): "
                       f"{_verdict(face)}")
            click.echo(f"  {'rank':>4}  {'distance':>8}  {'similarity':>10}  {'match':<10}  "
                       f"{'identity':<24}  path")
            for rank, m in enumerate(face["matches"], 1):
                click.echo(f"  {rank:>4}  {m['distance']:>8.3f}  {m['similarity']:>10.3f}  "
                           f"{_strength(m):<10}  {str(m['identity']):<24}  {m['path']}")

    if server:
        for name, value in (("--index", index), ("--model", model), ("--absolute-paths", absolute_paths),
                            ("--species", species)):
            if value:
                raise click.UsageError(f"{name} is the server's to choose; leave it out with --server")
        answer = _server_answer(server, k, threshold, box, fpir, detector)
    else:
        answer = _engine_answer("query", dict(k=k, threshold=threshold, fpir=fpir, absolute_paths=absolute_paths,
                                              box=_parse_box(box), species=species), index, model, detector)
    _run_photos(photos, answer, as_json, show)


@main.command()
@photos_argument
@k_option
@fpir_option
@search_threshold_option
@index_option
@model_option
@detector_option
@absolute_paths_option
@box_option
@species_option
@lines_option
def identify(photos, k, fpir, threshold, index, model, detector, absolute_paths, box, species, as_json) -> None:
    """Who is in each of PHOTOS (files, or folders of images): for each face, the identity of
    its nearest gallery face when that face is a match (as near as at most --fpir of
    strangers' searches come in a gallery of this size), else "unknown".
    Exit status 0 when every photo was searched, 1 when any could not be."""
    def show(photo, result):
        _echo_header(photo, result)
        for number, face in enumerate(result["faces"], 1):
            click.echo(f"face {number}{_kind(result, face)}  box {_box(face['box'])}  ({_found_by(face)}): "
                       f"{_verdict(face)}")

    options = dict(k=k, threshold=threshold, fpir=fpir, absolute_paths=absolute_paths, box=_parse_box(box),
                   species=species)
    _run_photos(photos, _engine_answer("identify", options, index, model, detector), as_json, show)


@main.command()
@click.argument("photo_a", type=click.Path())
@click.argument("photo_b", type=click.Path())
@click.option("--model", default="human", show_default=True,
              help="Model name (human, dog) or checkpoint path.")
@threshold_option
@detector_option
@click.option("--box-a", metavar="X0,Y0,X1,Y1", help="Compare the face in this box of PHOTO_A (pixels: "
                                                     "left, top, right, bottom) instead of its largest face.")
@click.option("--box-b", metavar="X0,Y0,X1,Y1", help="The same for PHOTO_B.")
@json_option
def verify(photo_a, photo_b, model, threshold, detector, box_a, box_b, as_json) -> None:
    """Whether PHOTO_A and PHOTO_B show the same individual (the largest face of each, or
    the face in --box-a / --box-b). Needs no index.

    \b
    Exit status, as cmp and diff: 0 same, 1 different, 2 error (a bad photo, no face,
    a bad model or threshold).
    """
    boxes = _parse_box(box_a), _parse_box(box_b)     # a malformed box is a usage error (2)
    try:
        from faces.imaging import load_image
        images = load_image(photo_a), load_image(photo_b)   # bad files fail before the model loads
        from .engine import FacePipeline
        _one_torch_thread()
        result = FacePipeline.load(model, detector).verify(*images, names=(photo_a, photo_b),
                                                            threshold=threshold, boxes=boxes)
    except clitools.USER_ERRORS as error:   # search's own errors register on import
        raise Trouble(str(error)) from None
    except Exception as error:   # anything unforeseen is still trouble (2), never "different"
        logging.getLogger(__name__).debug("verify failed", exc_info=True)
        raise Trouble(f"unexpected {type(error).__name__}: {error}") from None
    if as_json:
        print_json(result)
    else:
        verdict = "same" if result["same"] else "different"
        relation = "<=" if result["same"] else ">"
        click.echo(f"{verdict}: distance {result['distance']:.3f} {relation} threshold "
                   f"{result['threshold']:.3f} ({_point(result)}; model {result['model']})")
    raise SystemExit(0 if result["same"] else 1)


@main.command()
@index_option
@model_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on: 127.0.0.1 for this machine only, 0.0.0.0 (or a LAN "
                   "address) for other machines too (then set $FACESEARCH_API_KEY and "
                   "$FACESEARCH_ALLOWED_HOSTS).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535),
              help="TCP port to listen on.")
@click.option("--threads", default=SERVE_THREADS, show_default=True, type=click.IntRange(min=1),
              help="Request threads; they share one loaded engine. A browser fetches up to 6 "
                   "thumbnails at once, so fewer than 8 makes a page load queue.")
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
    try:
        # ident="": no Server header announcing waitress.
        server = waitress.create_server(app, host=host, port=port, threads=threads, ident="")
    except OSError as error:     # one line, not waitress's traceback
        raise click.ClickException(_bind_problem(error, host, port)) from None
    click.echo(f"facesearch on http://{host}:{port}/ for host names {', '.join(app.config['ALLOWED_HOSTS'])} "
               "(Ctrl-C stops it)", err=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


def _bind_problem(error: OSError, host: str, port: int) -> str:
    """Why the server could not listen, in one line, and what to do."""
    import errno
    import socket
    if error.errno == errno.EADDRINUSE:
        return (f"port {port} on {host} is taken (another server is listening there); "
                f"choose another with --port, e.g. search serve --port {port + 1 if port < 65535 else 8000}")
    if error.errno == errno.EACCES:
        return f"not allowed to listen on port {port} of {host}; choose a port above 1023 with --port"
    if error.errno == errno.EADDRNOTAVAIL or isinstance(error, socket.gaierror):
        return f"cannot listen on {host}: not an address of this machine; choose one with --host"
    return f"cannot listen on {host}:{port}: {error.strerror or error}"


def _engine_answer(command, options, index, model, detector):
    """A function answering one photo with this process's own engine (loaded once here)."""
    from indexer.config import existing_index
    existing_index(index)     # a missing index is said before torch loads
    from .engine import QueryEngine
    from .errors import SearchError
    _one_torch_thread()
    engine = QueryEngine(index, model=model, detector=detector)
    try:
        # A bad --fpir, --threshold or --species fails once, here.
        engine.match_rule(options["fpir"], options["threshold"], options.get("species"))
    except SearchError as error:
        raise click.UsageError(str(error)) from None
    method = getattr(engine, command)
    return lambda photo: method(photo, name=photo, **options)


def _parse_box(text):
    """--box's text as a box, or None; a malformed one is a usage error before anything loads."""
    from faces.detectors import parse_box
    if text is None:
        return None
    try:
        return parse_box(text)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--box") from None


def _server_answer(url, k, threshold, box=None, fpir=None, detector=None):
    """A function answering one photo by asking `search serve` at `url`."""
    from .client import SearchClient, ServerError
    try:
        client = SearchClient(url)
    except ServerError as error:
        raise click.UsageError(str(error)) from None
    if box is not None:
        _parse_box(box)          # checked here too: a bad box is a usage error, not a photo's
    return lambda photo: client.query(photo, k, threshold, box, fpir, detector)


def _run_photos(photos, answer, as_json, show) -> None:
    """Answer every photo; a photo that fails is reported and the rest go on."""
    from .client import PhotoRefused, ServerError
    from .errors import SearchError
    paths = expand_photos(photos)
    failed = 0
    for photo, problem in paths:
        try:
            if problem:
                raise SearchError(f"{photo}: {problem}")
            result = answer(photo)
        except ServerError as error:     # every other photo would fail alike
            raise click.ClickException(str(error)) from None
        except (ImageError, SearchError, PhotoRefused) as error:
            failed += 1
            if as_json:
                print_json({"photo": readable(photo), "error": str(error)})
            else:
                click.echo(f"Error: {error}", err=True)
            continue
        if as_json:
            print_json({"photo": readable(photo), **result})
        else:
            show(photo, result)
    if failed:
        raise SystemExit(1)


def expand_photos(photos) -> list[tuple[str, str | None]]:
    """(path, problem) for each photo: files as given, folders replaced by the images under
    them (sorted); a folder with none gives one entry with the problem."""
    from pathlib import Path
    from faces.imaging import is_image_name
    expanded = []
    for photo in photos:
        if Path(photo).is_dir():
            found = sorted(str(p) for p in Path(photo).rglob("*") if p.is_file() and is_image_name(p))
            expanded.extend((path, None) for path in found)
            if not found:
                expanded.append((photo, "a folder with no images"))
        else:
            expanded.append((photo, None))
    return expanded


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
    models = result.get("models") or []
    if len(models) > 1:      # an index of several models: each species by its own model and rule
        click.echo(f"{readable(photo)}: {faces} face{'s' * (faces != 1)}")
        for part in models:
            click.echo(f"  {part['species']} faces: model {part['model']}, detector {part['detector']}; a match is "
                       f"distance <= {part['threshold']:.3f}: {rule_in_words(part['decision'])}")
            if part["decision"].get("message"):
                click.echo(f"  note: {part['decision']['message']}")
        return
    click.echo(f"{readable(photo)}: {faces} face{'s' * (faces != 1)} (model {result['model']}, detector "
               f"{result['detector']}; a match is distance <= {result['threshold']:.3f}: {rule_in_words(result['decision'])})")
    if result["decision"].get("message"):
        click.echo(f"note: {result['decision']['message']}")


def _kind(result, face) -> str:
    """' (dog)' after a face's number in an answer of several models; nothing otherwise."""
    return f" ({face['species']})" if len(result.get("models") or []) > 1 and face.get("species") else ""


def rule_in_words(decision: dict) -> str:
    """What `match` promises, in words: the stranger share at this gallery's size, or the
    per-pair operating point and what it gave on held-out identities."""
    size = f"{decision['individuals']:,} individual{'s' * (decision['individuals'] != 1)}"
    if decision["rule"] == "fpir":
        return f"at most {decision['fpir']:.1%} of strangers' searches see a match in this gallery of {size}"
    point = decision["operating_point"]
    said = f"{point['name']} operating point"
    if point["far"] is not None:
        said += f" ({point['far']:.2%} of held-out stranger pairs passed)"
    if decision["fpir"] is not None:
        said += f"; in this gallery of {size} about {decision['fpir']:.1%} of strangers' searches see a match"
    return said


def _point(result) -> str:
    """A per-pair operating point in words (verify): its name and what it gave on held-out identities."""
    point = result["operating_point"]
    if point["far"] is None:
        return f"{point['name']} operating point"
    return (f"{point['name']} operating point: on held-out identities {point['tar']:.1%} of same pairs "
            f"and {point['far']:.2%} of stranger pairs passed")


def _strength(match) -> str:
    """A gallery face's match wording (answers of older servers have only `match`)."""
    return match.get("strength") or ("possible" if match["match"] else "no match")


def _verdict(face) -> str:
    if face.get("identity", "unknown") != "unknown":
        rate = face.get("stranger_rate")
        rarity = f", strangers come this near in {rate:.2%} of searches" if rate is not None else ""
        return f"{face['identity']}  ({face['strength']} match, distance {face['distance']:.3f}{rarity})"
    return f"unknown  ({face.get('reason', 'no match')})"


def _found_by(face) -> str:
    """How the face was found, in words (answers of older servers have no found_by)."""
    return {"detector": "found by the detector", "box": "the box given",
            "whole image": "the whole image as the face"}.get(face.get("found_by"), "found")


def _box(box) -> str:
    return "whole image" if box is None else "(" + ", ".join(str(v) for v in box) + ")"
