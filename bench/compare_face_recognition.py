"""facesearch against face_recognition (dlib), in one run, on the same held-out photos.

1. Accuracy: verification on the pairs (LFW 10-fold protocol) and search (each identity's
   first photo queries every other photo) for a facesearch model (`trainer evaluate`'s
   numbers) and for face_recognition (HOG detector, upsampled once as it does by default;
   where it finds no face it is given the central box, so every photo counts).
2. Speed: a whole `indexer build --detector auto` (or --detector NAME; decode, detect, align, embed, SQLite,
   FAISS) on N of the photos against face_recognition's face_locations + face_encodings on
   the same N photos, as images/s and their ratio. The build is timed before and after
   face_recognition and averaged, since a shared machine's load drifts.

    python bench/compare_face_recognition.py --data runs/lfw-split/val --pairs runs/lfw-split/val_pairs.txt

face_recognition is not a facesearch dependency: `pip install --no-deps face-recognition
&& pip install "setuptools<81"` (its model package still imports pkg_resources).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from faces.checkpoint import load_model
from faces.imaging import load_image
from indexer.writer import IndexWriter
from trainer.data import read_pairs, scan_identities
from trainer.evaluate import (REPORT_FPIRS, evaluate, open_set_metrics, search_metrics, stranger_distances,
                              tar_at_far, verification_metrics)


def encode(path, face_recognition) -> np.ndarray:
    array = np.asarray(load_image(path))
    boxes = face_recognition.face_locations(array) or [
        (array.shape[0] // 4, 3 * array.shape[1] // 4, 3 * array.shape[0] // 4, array.shape[1] // 4)]
    return face_recognition.face_encodings(array, boxes[:1])[0]


def face_recognition_accuracy(data: str, pairs_file: str, face_recognition) -> dict:
    samples = scan_identities(data)
    pairs = read_pairs(pairs_file, data)
    vectors = {}
    for path in list(dict.fromkeys([s.path for s in samples] + [p.first for p in pairs] + [p.second for p in pairs])):
        vectors[path] = encode(path, face_recognition)
    distances = np.array([np.linalg.norm(vectors[p.first] - vectors[p.second]) for p in pairs])
    verification = verification_metrics(distances, np.array([p.same for p in pairs]))
    verification.pop("roc")
    names = sorted({s.identity for s in samples})
    labels = np.array([names.index(s.identity) for s in samples])
    embeddings = np.array([vectors[s.path] for s in samples])
    # The same low-FAR and 1:N measures as `trainer evaluate` (its low_far and open_set).
    same = np.array([p.same for p in pairs])
    strangers = stranger_distances(embeddings, labels)
    low = np.concatenate([distances[same], strangers])
    low_same = np.concatenate([np.ones(same.sum(), bool), np.zeros(len(strangers), bool)])
    low_far = {"tar_at_far_1e-3": tar_at_far(low, low_same, 1e-3), "tar_at_far_1e-4": tar_at_far(low, low_same, 1e-4),
               "same_pairs": int(same.sum()), "stranger_pairs": int(len(strangers))}
    return {"verification": verification, "search": search_metrics(embeddings, labels), "low_far": low_far,
            "open_set": open_set_metrics(embeddings, labels, fpirs=REPORT_FPIRS)}


def gallery_of(data: str, count: int, folder: Path) -> Path:
    """A gallery of links to the first `count` photos of DATA (nothing copied)."""
    for sample in scan_identities(data)[:count]:
        target = folder / sample.identity / sample.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(sample.path.resolve())
    return folder


def build_rate(gallery: Path, model: str, work: Path, run: int | str, detector: str = "auto") -> float:
    """Images/s of a whole `indexer build` of `gallery` into a new index (start-up included)."""
    started = time.perf_counter()
    with IndexWriter(work / f"index-{run}", create=True, model=model, detector=detector, progress=False) as writer:
        report = writer.build(gallery)
    return report.files / (time.perf_counter() - started)


def face_recognition_rate(gallery: Path, face_recognition) -> float:
    paths = sorted(p for p in gallery.rglob("*") if p.is_file() or p.is_symlink())
    started = time.perf_counter()
    for path in paths:
        array = np.asarray(load_image(path))
        face_recognition.face_encodings(array, face_recognition.face_locations(array))
    return len(paths) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="Held-out identity folders.")
    parser.add_argument("--pairs", required=True, help="Pairs file among them (LFW format).")
    parser.add_argument("--model", default="human")
    parser.add_argument("--speed-images", type=int, default=400, help="Photos in the speed comparison.")
    parser.add_argument("--detector", default="auto", help="The build's detector in the speed comparison.")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-facesearch", action="store_true",
                        help="Measure face_recognition's accuracy only (`trainer evaluate` gives the model's).")
    args = parser.parse_args()
    import face_recognition

    result = {"model": args.model}
    if not args.skip_accuracy:
        keys = ("accuracy", "accuracy_std", "auc", "tar_at_far_1e-3")
        result["accuracy"] = {}
        if not args.skip_facesearch:
            ours = evaluate(load_model(args.model), args.data, args.pairs, progress=False)
            result["accuracy"]["facesearch"] = {"verification": {k: ours["verification"][k] for k in keys},
                                                **{k: ours[k] for k in ("search", "low_far", "open_set")}}
        started = time.perf_counter()
        theirs = face_recognition_accuracy(args.data, args.pairs, face_recognition)
        result["accuracy"]["face_recognition"] = {"verification": {k: theirs["verification"][k] for k in keys},
                                                  **{k: theirs[k] for k in ("search", "low_far", "open_set")},
                                                  "seconds": round(time.perf_counter() - started, 1)}
    if args.skip_speed:
        print(json.dumps(result, indent=1))
        return
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        gallery = gallery_of(args.data, args.speed_images, work / "gallery")
        before = build_rate(gallery, args.model, work, 0, args.detector)
        theirs_rate = face_recognition_rate(gallery, face_recognition)
        after = build_rate(gallery, args.model, work, 1, args.detector)
    ours_rate = (before + after) / 2
    result["speed"] = {"photos": args.speed_images, "detector": args.detector, "facesearch_build_img_s": round(ours_rate, 1),
                       "facesearch_build_runs_img_s": [round(before, 1), round(after, 1)],
                       "face_recognition_img_s": round(theirs_rate, 1),
                       "ratio": round(ours_rate / theirs_rate, 2)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
