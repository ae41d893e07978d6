"""Dogs in ordinary photos: does the dog detector find the face so that search still works?

For a dog model (bundled `dog` by default, or any checkpoint: rerun it when the model
changes), on the dogs it never trained on (`trainer split` with seed 0, as the dog model's
card says; the detector trained on the other dogs only):

- gallery: each held-out dog's photos but its first, embedded as the face crops they are;
- probes: each dog's first photo,
  - as the tight crop (the baseline: `--detector none`, as a cropped gallery is searched),
  - the same crop through the dog detector (a crop must still be found as a face),
  - pasted at 20-35% of the width of an 800 x 600 photo (tilted up to 10 degrees, soft
    edges) whose background is a real photo: an LFW picture of a person the detector neither
    trained nor chose its threshold on, enlarged; searched with the detector (its best face), and, for comparison,
    as the whole picture (what search did before the detector);
- pictures without a dog: LFW portraits, flat grey, noise.

It prints how often the right dog comes first (rank-1) in each case, the photo's rank-1 as
a ratio of the tight crop's (the target is at least 0.8), detection recall at IoU 0.5,
false detections per photo, and the share of no-dog pictures where no face is found
(the target is at least 0.95).

    python bench/dog_photos.py [--model dog] [--detector-model PATH] [--json]
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from faces.checkpoint import load_model                              # noqa: E402
from faces.detectors.dog import DogFaceDetector, Square, cut_square, square_iou  # noqa: E402
from search.engine import FacePipeline                                 # noqa: E402
from trainer.composites import ImageSource, people_by_role, photo_with_a_face  # noqa: E402
from trainer.data import group_by_identity, scan_identities, split_identities  # noqa: E402
from trainer.dog_detector import no_dog_pictures                       # noqa: E402

DATA = REPO.parent / "shared" / "data"


def rank1(embeddings: np.ndarray, found: list[bool], gallery: np.ndarray, gallery_ids: list[str],
          probe_ids: list[str]) -> float:
    """Share of probes whose nearest gallery face is their own dog (a probe without a face misses)."""
    nearest = np.argmax(embeddings @ gallery.T, axis=1)
    return float(np.mean([ok and gallery_ids[n] == dog for ok, n, dog in zip(found, nearest, probe_ids)]))


def best_face(photo) -> tuple[int | None, object]:
    if not photo.faces:
        return None, None
    i = max(range(len(photo.faces)), key=lambda n: photo.faces[n].score or 0.0)
    return i, photo.faces[i]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="dog", help="Dog model: bundled name or checkpoint path.")
    parser.add_argument("--detector-model", help="Detector checkpoint (default: the bundled dog-detector.pt).")
    parser.add_argument("--data", default=str(DATA / "dogfacenet" / "images"))
    parser.add_argument("--people", default=str(DATA / "lfw" / "images"))
    parser.add_argument("--no-dog", type=int, default=400, help="Pictures without a dog to try.")
    parser.add_argument("--dogs", type=int, help="Only the first N held-out dogs (a quick look).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.time()

    samples = scan_identities(args.data)
    val_dogs = split_identities(sorted({s.identity for s in samples})).choose   # the dog model's held-out dogs
    groups = group_by_identity([s for s in samples if s.identity in set(val_dogs)])
    dogs = [dog for dog in sorted(groups) if len(groups[dog]) >= 2][:args.dogs]
    model = load_model(args.model)
    crops = FacePipeline(model, "none")
    pipeline = FacePipeline(model, "dog")
    if args.detector_model:     # another detector checkpoint than the bundled one
        pipeline.detector = DogFaceDetector(model_path=args.detector_model)

    from PIL import Image
    gallery_paths = [(s.path, dog) for dog in dogs for s in groups[dog][1:]]
    gallery = model.embed_cropped([Image.open(p).convert("RGB") for p, _ in gallery_paths])
    gallery_ids = [dog for _, dog in gallery_paths]
    probes = [Image.open(groups[dog][0].path).convert("RGB") for dog in dogs]

    rng = random.Random(args.seed)
    test_people = people_by_role(Path(args.people))["test"]   # neither trained nor tuned on
    people = ImageSource(test_people, rng)
    dim = gallery.shape[1]
    cases = {name: (np.zeros((len(dogs), dim), np.float32), [False] * len(dogs))
             for name in ("tight crop", "tight crop, dog detector", "photo, dog detector", "photo, true square",
                         "photo, whole image")}
    hits = false = 0
    ious = []
    detect_ms = []
    for i, probe in enumerate(probes):
        cases["tight crop"][0][i] = crops.read(probe).embeddings[0]
        cases["tight crop"][1][i] = True
        n, _ = best_face(photo := pipeline.read(probe))
        if n is not None:
            cases["tight crop, dog detector"][0][i] = photo.embeddings[n]
            cases["tight crop, dog detector"][1][i] = True
        scene = photo_with_a_face(probe, people, rng)
        cases["photo, whole image"][0][i] = crops.read(scene.image).embeddings[0]
        cases["photo, whole image"][1][i] = True
        photo = pipeline.read(scene.image)
        detect_ms.append(photo.timings_ms["detect"])
        n, face = best_face(photo)
        if n is not None:
            cases["photo, dog detector"][0][i] = photo.embeddings[n]
            cases["photo, dog detector"][1][i] = True
        truth = scene.faces[0]
        # The face cut out where it was pasted: what a perfect detector would give.
        cases["photo, true square"][0][i] = model.embed_images([cut_square(scene.image, truth, 224)])[0]
        cases["photo, true square"][1][i] = True
        boxes = [Square((f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2, max(f.box[2] - f.box[0], f.box[3] - f.box[1]))
                 for f in photo.faces]
        ious.append(max((square_iou(truth, box) for box in boxes), default=0.0))
        hits += any(square_iou(truth, box) >= 0.5 for box in boxes)
        false += sum(square_iou(truth, box) < 0.5 for box in boxes)
    rates = {name: rank1(emb, found, gallery, gallery_ids, dogs) for name, (emb, found) in cases.items()}
    found_crops = float(np.mean(cases["tight crop, dog detector"][1]))

    no_dogs = no_dog_pictures(test_people, args.no_dog, args.seed + 7)
    kinds = ["portrait", "portrait", "grey", "noise"]
    without = {kind: [] for kind in set(kinds)}
    for i, picture in enumerate(no_dogs):
        without[kinds[i % 4]].append(not pipeline.detector(picture))
    result = {
        "model": args.model, "detector": args.detector_model or "bundled dog-detector.pt",
        "held_out_dogs": len(dogs), "gallery_faces": len(gallery_ids),
        "rank1": rates,
        "photo_vs_tight_crop": rates["photo, dog detector"] / rates["tight crop"] if rates["tight crop"] else None,
        "photo_detection_recall_iou_0.5": hits / len(dogs),
        "photo_false_detections_per_picture": false / len(dogs),
        "photo_best_iou_median": float(np.median(ious)),
        "tight_crops_found_by_detector": found_crops,
        "no_dog_pictures_without_a_face": float(np.mean([v for vs in without.values() for v in vs])),
        "no_dog_by_kind": {kind: float(np.mean(v)) for kind, v in sorted(without.items())},
        "no_dog_pictures": len(no_dogs),
        "detect_ms_median_800x600": float(np.median(detect_ms)),
        "seconds": round(time.time() - started),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"model {args.model}; {len(dogs)} held-out dogs, gallery of {len(gallery_ids)} faces")
    for name, rate in rates.items():
        print(f"  rank-1 {name:<26} {rate:.3f}")
    print(f"  photo / tight crop: {result['photo_vs_tight_crop']:.3f} (target >= 0.8)")
    print(f"  detection on photos: recall at IoU 0.5 {result['photo_detection_recall_iou_0.5']:.3f}, "
          f"{result['photo_false_detections_per_picture']:.3f} false detections per photo, median best IoU "
          f"{result['photo_best_iou_median']:.3f}, "
          f"median {result['detect_ms_median_800x600']:.0f} ms")
    print(f"  tight crops found by the detector: {found_crops:.3f}")
    print(f"  no-dog pictures without a face: {result['no_dog_pictures_without_a_face']:.3f} of {len(no_dogs)} "
          f"(target >= 0.95); by kind " + ", ".join(f"{k} {v:.3f}" for k, v in result["no_dog_by_kind"].items()))
    print(f"  ({result['seconds']} s)")


if __name__ == "__main__":
    main()
