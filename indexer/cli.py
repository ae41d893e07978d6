"""`indexer`: build and maintain the gallery index that `search` and the web page query.

Only click and light modules are imported here: the database (SQLAlchemy, Alembic), FAISS
and torch are imported by the commands that use them, so `--help`, usage errors and a
refused lock answer at once (tests/test_cli_startup.py holds the budget).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import click

from faces.clitools import FriendlyGroup, print_json, setup_logging
from faces.thresholds import DEFAULT_OPERATING_POINT, THRESHOLD_HELP

from .config import (DEFAULT_CHECKPOINT_EVERY, DEFAULT_INDEX_DIR, INDEX_ENV_VAR, INDEX_TYPES, default_workers,
                     existing_index, resolve_index_dir)
from .lock import lock_for_writing
from .settings import DB_HELP, STORE_HELP

if TYPE_CHECKING:
    from .writer import ChangeReport, IndexWriter


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"],
                                                    "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Log debugging detail.")
def main(verbose: bool) -> None:
    """Index a gallery of face images (FAISS vectors + SQLite metadata) for face search.

    \b
    GALLERY is a folder of images; the folder directly under it that holds an image is
    that image's identity (person or dog), as in LFW and DogFaceNet:
      GALLERY/<identity>/<image>.jpg
    The index lives in --index DIR, else $FACESEARCH_INDEX, else ./facesearch-index.
    """
    setup_logging(verbose)
    if not verbose:
        logging.getLogger("alembic").setLevel(logging.WARNING)   # no migration chatter
        logging.getLogger("faiss").setLevel(logging.WARNING)


def index_option(command):
    return click.option("--index", "index_dir", type=click.Path(file_okay=False),
                        help=f"Index folder (default: ${INDEX_ENV_VAR}, else ./{DEFAULT_INDEX_DIR}).")(command)


def json_option(command):
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")(command)


def embedding_options(command):
    """What adding images needs: how to embed them, and how fast."""
    for option in reversed([
        click.option("--batch-size", default=64, show_default=True, help="Images per model batch."),
        click.option("--workers", type=int, default=None,
                     help=f"Decoding worker processes (default here: {default_workers(False)} with "
                          f"--detector none and a model that needs no landmarks, "
                          f"{default_workers(True)} otherwise); with --engine ray, Ray actors "
                          "(default: one per CPU of the Ray cluster)."),
        click.option("--checkpoint-every", default=DEFAULT_CHECKPOINT_EVERY, show_default=True,
                     help="Save the index at least every N new faces (a killed build redoes at most "
                          "that many, or a quarter of the index if larger)."),
        click.option("--no-progress", is_flag=True, help="No progress bar."),
    ]):
        command = option(command)
    return command


def known_detector(name: str | None) -> str | None:
    # Checked when the command runs, so detectors added to faces.detectors later are accepted.
    from faces.detectors import FACTORIES    # numpy and Pillow: not for --help
    names = ("auto", *FACTORIES)
    if name is not None and name not in names:
        raise click.BadParameter(f"unknown detector {name!r}; choose from {', '.join(names)}",
                                 param_hint="--detector")
    return name


def _models(value: str | None) -> list[str] | None:
    if value is None:
        return None
    names = [name.strip() for name in value.split(",")]
    if not all(names):
        raise click.BadParameter(f"{value!r}: give model names or checkpoint paths separated by commas, "
                                 "e.g. human,dog", param_hint="--models")
    return names


def open_writer(index_dir, create=False, **options) -> IndexWriter:
    index_dir = resolve_index_dir(index_dir)
    lock = lock_for_writing(index_dir, create)   # a busy index is refused before torch loads
    try:
        from .writer import IndexWriter   # torch and the model code: only for commands that change
        options.pop("as_json", None)
        progress = not options.pop("no_progress", False)
        return IndexWriter(index_dir, create=create, progress=progress, lock=lock, **options)
    except BaseException:
        lock.release()
        raise


def show_change(report: ChangeReport, as_json: bool) -> None:
    if as_json:
        print_json(report.to_dict())
        return
    data = report.to_dict()
    parts = [f"{report.kind}: {report.images_added} images added ({report.faces_added} faces)"]
    if report.files:
        parts.append(f"{report.unchanged} of {report.files} files unchanged")
    if report.removed:
        parts.append(f"{report.removed} rows removed")
    if report.identities_updated:
        parts.append(f"{report.identities_updated} identities updated")
    parts.append(f"{report.skipped} skipped")
    click.echo(", ".join(parts) + f" in {report.seconds:.1f} s"
               + (f" ({data['images_per_second']} images/s)" if report.images_added else ""))
    for reason, count in report.skip_reasons.most_common():
        click.echo(f"  skipped {count}: {reason}")
    for example in report.skipped_examples:
        click.echo(f"    {example}")
    if report.missing:
        click.echo(f"{report.missing} indexed files are gone from disk: `indexer build --prune` forgets them")
    for path in report.not_found:
        click.echo(f"not in the index: {path}")
    click.echo(f"index: {report.vectors} vectors ({report.index_type})")


@main.command()
@click.argument("gallery", type=click.Path(exists=True, file_okay=False))
@click.option("--model", help="Bundled model (human, dog) or checkpoint path; default: the index's "
                              "own, or human for a new index.")
@click.option("--models", metavar="MODEL,MODEL", callback=lambda ctx, param, value: _models(value),
              help="Several models, one per species, e.g. human,dog: every photo's human faces (found by "
                   "--detector's human detector, default blazeface) and dog faces (the dog detector) are each "
                   "embedded by their own model into one index, one vector store per model; search then "
                   "finds both kinds. Remembered by the index.")
@click.option("--detector", callback=lambda ctx, param, value: known_detector(value),
              help="'blazeface' (small and tilted faces too) or 'hog' (dlib) finds and aligns every "
                   "human face in each photo (one entry per face); "
                   "'dog' finds dog faces; 'none' takes the whole image as the face (cropped "
                   "galleries such as LFW and DogFaceNet); 'auto' is the model's default: blazeface "
                   "for human models, dog for dog models. The index records the one it was built "
                   "with and queries use it unless told otherwise. Default: the index's own; "
                   "for a new index, auto. With --models it is the detector of the models whose "
                   "species' faces it finds ('none': of all); the others use their own default.")
@index_option
@click.option("--index-type", type=click.Choice(("auto",) + INDEX_TYPES), default="auto", show_default=True,
              help="auto: exact (flat) search, switching to a trained IVF index for large galleries. "
                   "With Milvus: FLAT, IVF_FLAT, HNSW.")
@click.option("--store", metavar="faiss|milvus:URI", help=STORE_HELP)
@click.option("--db", "database", metavar="URL", help=DB_HELP)
@click.option("--engine", "build_engine", type=click.Choice(("local", "ray")), default="local", show_default=True,
              help="local: decode, detect and embed in this process (with --workers). ray: over Ray Data, "
                   "one model per actor, on the Ray cluster $RAY_ADDRESS names, else a local one on this "
                   "machine's cores (pip install 'facesearch[cluster]'); the vectors go into the same store.")
@click.option("--prune", is_flag=True, help="Forget indexed files that are gone from disk.")
@embedding_options
@json_option
def build(gallery: str, prune: bool, as_json: bool, **options) -> None:
    """Embed and index every new or changed image under GALLERY (unchanged ones are skipped).

    \b
    A new index keeps its vectors in FAISS and its metadata in SQLite inside --index DIR
    unless --store and --db say otherwise, e.g. for a Milvus cluster and PostgreSQL:
      indexer build GALLERY --store milvus:http://milvus:19530 --db postgresql://me@db/faces
    The index folder remembers both: later commands need neither flag.
    """
    if options.get("model") and options.get("models"):
        raise click.UsageError("give --model or --models, not both")
    with open_writer(create=True, **options) as writer:
        show_change(writer.build(gallery, prune=prune), as_json)


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--identity", help="Identity of these images (default: from the gallery folder they are in).")
@click.option("--model", help="Model to embed with; must be the index's own.")
@index_option
@embedding_options
@json_option
def add(files: tuple[str, ...], identity: str | None, as_json: bool, **options) -> None:
    """Index a few files without walking the whole gallery."""
    with open_writer(create=True, **options) as writer:
        show_change(writer.add(files, identity=identity), as_json)


@main.command()
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--identity", help="Remove every image of this identity.")
@index_option
@json_option
def remove(files: tuple[str, ...], identity: str | None, index_dir: str | None, as_json: bool) -> None:
    """Forget FILES (or all images of --identity); the files themselves are left alone."""
    if not files and identity is None:
        raise click.UsageError("give FILES to remove, or --identity NAME")
    with open_writer(index_dir) as writer:
        show_change(writer.remove(files, identity=identity), as_json)


@main.command()
@index_option
@json_option
def stats(index_dir: str | None, as_json: bool) -> None:
    """Counts (images, identities, skipped files and why), model, index type, size on disk."""
    index_dir = existing_index(index_dir)    # said before FAISS and the database load
    from .gallery import Gallery
    with Gallery.open(index_dir) as gallery:
        data = gallery.stats()
        for record, part in zip(gallery.models, data["models"]):
            size = gallery.size(record.species if gallery.several else None)
            part["decision"] = (gallery.load_model("cpu", record.species)
                                .match_rule(size["individuals"], size["faces"]).describe())
        data["decision"] = data["models"][0]["decision"]
    if as_json:
        print_json(data)
        return
    model, index = data["model"], data["index"]
    click.echo(f"{data['index_dir']}: {data['images']} images, {data['faces']} faces, "
               f"{data['identities']} identities, {data['skipped']} skipped")
    for reason, count in data["skip_reasons"].items():
        click.echo(f"  skipped {count}: {reason}")
    if data["pending"]:
        click.echo(f"{data['pending']} faces pending from an interrupted build (the next build settles them)")
    if data["clusters"]:
        click.echo(f"clusters: {data['clusters']}")
    if data["individuals"]:
        click.echo(f"individuals: {data['individuals']} ({data['named_individuals']} named; `indexer individuals` "
                   "lists them)")
    several = len(data["models"]) > 1
    for model in data["models"]:
        click.echo(f"model: {model['name']} ({model['species']}, {model['embedding_dim']}-D, threshold "
                   f"{model['threshold']:.4f}, detector {model['detector']}, sha256 {model['sha256'][:12]})"
                   + (f": {model['faces']} faces, {model['index']['vectors']} vectors ({model['index']['type']})"
                      if several else ""))
        decision = model["decision"]
        indent = "  " if several else ""
        if decision["rule"] == "fpir":
            click.echo(f"{indent}match: distance <= {decision['threshold']:.4f}, so that at most {decision['fpir']:.0%} "
                       f"of searches by strangers name someone among its {decision['individuals']:,} individuals "
                       f"(confident within {decision['confident_within']:.4f}; `search --fpir` asks for another share)")
        else:
            click.echo(f"{indent}match: distance <= {decision['threshold']:.4f} per pair ({decision['message']})")
    click.echo(f"index: {index['type']}, {index['vectors']} vectors in {data['store']}; metadata in "
               f"{data['database']}; size on this disk {data['size_bytes']['total'] / 1e6:.1f} MB")


@main.command()
@click.option("--repair", is_flag=True, help="Fix what is inconsistent (re-embedding from the files).")
@click.option("--sample", default=20, show_default=True, help="Faces whose embeddings are re-computed.")
@index_option
@json_option
@click.option("--no-progress", is_flag=True, help="No progress bar while repairing.")
def check(repair: bool, sample: int, index_dir: str | None, as_json: bool, no_progress: bool) -> None:
    """Prove that the vector index and the database agree; exit 1 if not (after --repair: if
    the repair did not fix everything)."""
    from .maintenance import check_index, repair_index
    with open_writer(index_dir, no_progress=no_progress) as writer:
        found = check_index(writer, sample)
        result = {"check": found.to_dict()}
        if repair and not found.ok:
            result["repair"] = repair_index(writer, found).to_dict()
            result["after_repair"] = check_index(writer, sample).to_dict()
    final = result.get("after_repair", result["check"])
    if as_json:
        print_json({**result, "ok": final["ok"]})
    else:
        for problem in found.problems:
            click.echo(f"problem: {problem}")
        if "repair" in result:
            repaired = result["repair"]
            click.echo(f"repair: {repaired['removed']} rows dropped, {repaired['faces_added']} faces "
                       f"re-embedded, {repaired['skipped']} files unusable")
            for problem in final["problems"]:
                click.echo(f"still wrong: {problem}")
        click.echo(f"{'ok' if final['ok'] else 'NOT OK'}: {final['indexed']} indexed faces, "
                   f"{final['vectors']} vectors, {final['sampled']} embeddings re-computed")
    if not final["ok"]:
        raise SystemExit(1)


@main.command()
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The .npz file to write.")
@index_option
def export(out: str, index_dir: str | None) -> None:
    """Write ids, paths, identities, boxes, clusters and embeddings to an .npz file."""
    index_dir = existing_index(index_dir)    # said before FAISS and the database load
    from .gallery import Gallery
    with Gallery.open(index_dir) as gallery:
        count = gallery.export(out)
    click.echo(f"exported {count} faces to {out}")


@main.command()
@click.option("--threshold", default=DEFAULT_OPERATING_POINT, show_default=True, help=THRESHOLD_HELP)
@click.option("--neighbours", default=100, show_default=True, type=click.IntRange(min=1),
              help="Nearest faces looked up per face (memory grows with faces x neighbours).")
@index_option
@json_option
def cluster(threshold: str, neighbours: int, index_dir: str | None, as_json: bool) -> None:
    """Group the gallery into individuals (`indexer individuals` lists them) and store each
    face's cluster (`indexer export` writes them): average-linkage clustering, two groups joining while the mean distance
    between their faces is within the threshold. Where gallery folders name identities, the
    clusters are scored against them: pairwise precision (of the pairs put together, the
    share that are one identity), recall (of each identity's pairs, the share put together),
    F1, and V-measure.

    Run again, it groups everything afresh; an individual found again keeps its id and
    name. Between runs, each build and add puts new faces into individuals by themselves.
    """
    from .maintenance import cluster_gallery
    with open_writer(index_dir) as writer:
        summary = cluster_gallery(writer, threshold, neighbours)
    if as_json:
        print_json(summary)
        return
    click.echo(f"{summary['faces']} faces in {summary['clusters']} clusters ({summary['singletons']} singletons; "
               f"largest {summary['largest']}) at distance {summary['threshold']:.4f} "
               f"({summary['operating_point']['name']} operating point)")
    kept = summary["individuals"]
    click.echo(f"individuals: {kept['individuals']} ({kept['kept']} kept their id and name, {kept['new']} new)"
               + (f"; names no longer given to any group: {', '.join(kept['names_dropped'])}"
                  if kept["names_dropped"] else ""))
    if "against_identities" in summary:
        known = summary["against_identities"]
        click.echo(f"against the {known['identities']} folder identities of {known['faces']} faces: pairwise "
                   f"precision {known['pairwise_precision']}, recall {known['pairwise_recall']}, "
                   f"F1 {known['pairwise_f1']}; V-measure {known['v_measure']} (homogeneity "
                   f"{known['homogeneity']}, completeness {known['completeness']})")


# --- individuals ---------------------------------------------------------------------------

def _individual_line(individual: dict) -> str:
    from faces.errors import readable
    name = readable(individual["name"]) if individual["name"] else "unnamed"
    photos = individual["photos"]
    return (f"{individual['id']:>8}  {individual['species']:<6}  {photos:>6} photo{'s' * (photos != 1)}  "
            f"{name}")


def _individual_detail(individual: dict, as_json: bool) -> None:
    if as_json:
        print_json(individual)
        return
    click.echo(_individual_line(individual))
    from faces.errors import readable
    for face in individual["face_list"]:
        click.echo(f"  face {face['id']}: {readable(face['path'])}")


@main.command()
@click.argument("individual_id", metavar="[ID]", required=False, type=click.IntRange(min=1))
@click.option("--species", help="Only individuals of this species (human, dog).")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many (the largest).")
@index_option
@json_option
def individuals(individual_id: int | None, species: str | None, limit: int | None, index_dir: str | None,
                as_json: bool) -> None:
    """The people and pets `indexer cluster` found: id, species, photos and name, largest
    first; with ID, that one and its faces."""
    index_dir = existing_index(index_dir)    # said before the database loads
    from .gallery import open_index_database
    from .individuals import get_individual, list_individuals
    from .settings import load_settings
    engine = open_index_database(index_dir, load_settings(index_dir))
    try:
        if individual_id is not None:
            _individual_detail(get_individual(engine, individual_id), as_json)
            return
        listing = list_individuals(engine, species, limit=limit)
    finally:
        engine.dispose()
    if as_json:
        print_json(listing)
        return
    if not listing["total"]:
        click.echo("no individuals yet: `indexer cluster` groups the faces into individuals")
        return
    click.echo(f"{listing['total']} individuals" + (f", the largest {len(listing['individuals'])}:" if limit else ":"))
    click.echo(f"{'id':>8}  {'species':<6}  {'photos':>13}  name")
    for individual in listing["individuals"]:
        click.echo(_individual_line(individual))


def _database_change(index_dir, change, *args):
    """Run a change to individuals with the index's writer lock held (no build runs meanwhile)."""
    from .lock import IndexLock
    index_dir = existing_index(index_dir)
    with IndexLock(index_dir):
        from .gallery import open_index_database
        from .settings import load_settings
        engine = open_index_database(index_dir, load_settings(index_dir))
        try:
            return change(engine, *args)
        finally:
            engine.dispose()


@main.command()
@click.argument("individual_id", metavar="ID", type=click.IntRange(min=1))
@click.argument("name", required=False)
@index_option
@json_option
def name(individual_id: int, name: str | None, index_dir: str | None, as_json: bool) -> None:
    """Name individual ID (without NAME: remove its name). `search identify` then answers
    NAME for its faces."""
    from .individuals import rename
    index_dir = existing_index(index_dir)
    from .gallery import open_index_database
    from .settings import load_settings
    engine = open_index_database(index_dir, load_settings(index_dir))    # no lock: the last rename wins
    try:
        _individual_detail(rename(engine, individual_id, name), as_json)
    finally:
        engine.dispose()


@main.command()
@click.argument("ids", metavar="ID ID...", nargs=-1, required=True, type=click.IntRange(min=1))
@index_option
@json_option
def merge(ids: tuple[int, ...], index_dir: str | None, as_json: bool) -> None:
    """Merge two or more individuals of one species into the first ID (its name is kept,
    else the first name among the others)."""
    from .individuals import merge as merge_individuals
    _individual_detail(_database_change(index_dir, merge_individuals, list(ids)), as_json)


@main.command()
@click.argument("individual_id", metavar="ID", type=click.IntRange(min=1))
@click.argument("faces", metavar="FACE...", nargs=-1, required=True, type=click.IntRange(min=1))
@index_option
@json_option
def split(individual_id: int, faces: tuple[int, ...], index_dir: str | None, as_json: bool) -> None:
    """Move faces out of individual ID into a new individual of their own (face ids:
    `indexer individuals ID` lists them)."""
    from .individuals import split as split_individual
    _individual_detail(_database_change(index_dir, split_individual, individual_id, list(faces)), as_json)


@main.command()
@click.argument("individual_id", metavar="ID", type=click.IntRange(min=1))
@index_option
@json_option
def forget(individual_id: int, index_dir: str | None, as_json: bool) -> None:
    """Forget individual ID, for privacy: its faces leave the index and the database (the
    photos stay on disk). Refused while another process changes the index."""
    with open_writer(index_dir) as writer:
        report = writer.forget(individual_id)
    if as_json:
        print_json({"forgotten": individual_id, **report.to_dict()})
        return
    click.echo(f"forgot individual {individual_id}: {report.removed} faces removed from the index "
               f"(the photos stay on disk); index: {report.vectors} vectors")


if __name__ == "__main__":
    main()
