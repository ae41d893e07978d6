"""Detection benchmark: held-out LFW faces placed in 1280 x 960 photos, small and tilted,
several a photo; each detector's recall and how often the right person comes first; held-out
LFW photos with no face; whole-build images/s against face_recognition on the same photos.

    python bench/detection.py --data ../shared/data/lfw/images --scenes 40
    python bench/detection.py --data ../shared/data/lfw/images --choose   # the score threshold, on training people (scenes, LFW photos)

People: identities sorted, shuffled by random.Random(0); positions 20-40% are the test people
(placed faces and gallery), 40-100% the training people (`--choose` and the backgrounds);
the first 20% (`--role choose`) are for trying changes without touching the test people. A placed face counts as found when a detected box's centre
is within half the face's size of the truth and its size within 0.5-2x; "right person
first" is the share of placed faces whose nearest gallery photo (the person's other photos
among all test people's) is theirs (face_recognition ranks with its own encodings).
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from faces.checkpoint import load_model  # noqa: E402
from faces.detectors import get_detector  # noqa: E402
from faces.imaging import list_images, load_image  # noqa: E402

SIZES = (24, 32, 48, 64, 96, 128)
FACE_FRACTION = 0.41          # the face's side in an LFW crop (the HOG box: 0.30-0.71)
FACE_CENTRE = (0.505, 0.525)  # its centre, as fractions of the crop


def people_by_role(root: Path) -> dict[str, list[str]]:
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    random.Random(0).shuffle(names)
    n = len(names)
    return {"choose": names[:n // 5], "test": names[n // 5:2 * n // 5], "train": names[2 * n // 5:]}


def place_faces(rng: random.Random, faces: list[Path], background: Path, size=(1280, 960)):
    """A photo with the faces pasted at random sizes and tilts; truth: (cx, cy, side, path)."""
    # A background without a face: the top-left corner of a training person's photo
    # (wall, sky, clothes), enlarged and blurred.
    scene = Image.open(background).convert("RGB").crop((0, 0, 48, 36)).resize(size, Image.BICUBIC).filter(
        ImageFilter.GaussianBlur(4))
    truth, taken = [], []
    for path in faces:
        side = rng.choice(SIZES)
        tilt = rng.uniform(-45, 45)
        crop = Image.open(path).convert("RGB")
        scale = side / (FACE_FRACTION * crop.width)
        full = max(8, round(crop.width * scale))
        for _ in range(50):
            cx, cy = rng.uniform(full, size[0] - full), rng.uniform(full, size[1] - full)
            if all(math.hypot(cx - x, cy - y) > (full + other) * 0.8 for x, y, other in taken):
                break
        taken.append((cx, cy, full))
        piece = crop.resize((full, full), Image.BILINEAR)
        mask = Image.new("L", (full, full), 0)
        ImageDraw.Draw(mask).ellipse((full * 0.12, full * 0.08, full * 0.88, full * 0.95), fill=255)
        mask = mask.filter(ImageFilter.GaussianBlur(max(1, full / 40)))
        piece, mask = piece.rotate(tilt, Image.BILINEAR), mask.rotate(tilt, Image.BILINEAR)
        left, top = round(cx - full / 2), round(cy - full / 2)
        scene.paste(piece, (left, top), mask)
        # The face's centre, turned with the piece about its middle (PIL turns counter-clockwise).
        dx, dy = (FACE_CENTRE[0] - 0.5) * full, (FACE_CENTRE[1] - 0.5) * full
        a = math.radians(tilt)
        fx = left + full / 2 + dx * math.cos(a) + dy * math.sin(a)
        fy = top + full / 2 - dx * math.sin(a) + dy * math.cos(a)
        truth.append((fx, fy, side, path))
    return scene, truth


def matched(truth, boxes) -> int | None:
    fx, fy, side, _ = truth
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        size = max(x1 - x0, y1 - y0)
        if math.hypot((x0 + x1) / 2 - fx, (y0 + y1) / 2 - fy) <= side / 2 and 0.5 <= size / side <= 2.0:
            return i
    return None


def make_scenes(root: Path, people: list[str], backgrounds: list[str], count: int, seed: int):
    rng = random.Random(seed)
    with_two = [p for p in people if len(list_images(root / p)) >= 2]
    scenes = []
    for _ in range(count):
        chosen = rng.sample(with_two, rng.randint(3, 5))
        faces = [list_images(root / p)[0] for p in chosen]
        background = rng.choice(list_images(root / rng.choice(backgrounds)))
        scenes.append(place_faces(rng, faces, background))
    return scenes, with_two


def score(scenes, found_boxes, rank1):
    """(recall by size, overall recall, right person first overall, right person first by size)."""
    by_size, hits, firsts, total = {}, 0, 0, 0
    for (scene, truth), boxes, firsts_of in zip(scenes, found_boxes, rank1):
        for t_index, t in enumerate(truth):
            i = matched(t, boxes)
            total += 1
            s = by_size.setdefault(t[2], [0, 0, 0])
            s[2] += 1
            if i is not None:
                hits += 1
                s[0] += 1
                first = firsts_of(t_index, i)
                firsts += first
                s[1] += first
    return ({size: round(h / n, 3) for size, (h, _, n) in sorted(by_size.items())},
            round(hits / total, 3), round(firsts / total, 3),
            {size: round(f / n, 3) for size, (_, f, n) in sorted(by_size.items())})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw" / "images"))
    parser.add_argument("--scenes", type=int, default=40)
    parser.add_argument("--people", type=int, default=0, help="only the first N test people (0: all)")
    parser.add_argument("--role", choices=("test", "choose"), default="test",
                        help="whose faces are placed and searched: the test people (what is reported) or the "
                             "choose people (positions 0-20%%, for trying changes without touching test)")
    parser.add_argument("--no-face-photos", type=int, default=0, help="held-out LFW photos to check for 'no face' (0: all)")
    parser.add_argument("--choose", action="store_true", help="score thresholds on training people's scenes")
    parser.add_argument("--skip-face-recognition", action="store_true")
    parser.add_argument("--skip-no-face", action="store_true")
    args = parser.parse_args()
    import torch
    torch.set_num_threads(1)
    root = Path(args.data)
    roles = people_by_role(root)
    model = load_model("human")
    blaze = get_detector("blazeface", model.preprocess)
    if args.choose:
        scenes, _ = make_scenes(root, roles["train"], roles["train"], args.scenes, seed=1)
        blaze.threshold = 0.3
        found = [blaze(scene) for scene, _ in scenes]
        for threshold in (0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9):
            boxes = [[f.box for f in faces if f.score >= threshold] for faces in found]
            by_size, recall, _, _ = score(scenes, boxes, [lambda t, i: 0] * len(scenes))
            placed = sum(len(t) for _, t in scenes)
            extra = sum(len(b) for b in boxes) - recall * placed
            print(json.dumps({"threshold": threshold, "recall": recall, "false_per_photo": round(extra / len(scenes), 3),
                              "by_size": by_size}))
        # LFW photos of training people (each shows a face): the share a threshold leaves faceless.
        photos = [path for p in roles["train"][:700] for path in list_images(root / p)]
        best = [max((f.score for f in faces), default=0.0) for start in range(0, len(photos), 32)
                for faces in blaze.detect_many([load_image(p) for p in photos[start:start + 32]])]
        for threshold in (0.3, 0.4, 0.5, 0.6, 0.7):
            print(json.dumps({"threshold": threshold, "training_lfw_photos": len(best),
                              "no_face": sum(b < threshold for b in best)}))
        return

    test_people = roles[args.role][:args.people] if args.people else roles[args.role]
    scenes, with_two = make_scenes(root, test_people, roles["train"], args.scenes, seed=2)
    gallery_paths = [path for p in with_two for path in list_images(root / p)[1:]]
    gallery_people = np.array([path.parent.name for path in gallery_paths])
    gallery = model.embed_cropped([load_image(p) for p in gallery_paths])
    report = {"scenes": len(scenes), "placed_faces": sum(len(t) for _, t in scenes), "gallery": len(gallery_paths),
              "role": args.role, "people": len(test_people)}
    hog = get_detector("hog", model.preprocess)
    folder = Path(tempfile.mkdtemp(prefix="detbench-"))
    for n, (scene, _) in enumerate(scenes):
        scene.save(folder / f"scene_{n:03d}.jpg", quality=95)
    for name, detector in (("blazeface", blaze), ("hog", hog)):
        started = time.perf_counter()
        results = []
        for n in range(len(scenes)):
            image = load_image(folder / f"scene_{n:03d}.jpg")
            faces = detector(image)
            results.append((faces, model.embed_images([f.image for f in faces])))
        seconds = time.perf_counter() - started
        rank1 = [(lambda emb, truth: lambda t, i: int(gallery_people[np.argmax(gallery @ emb[i])] == truth[t][3].parent.name))(
            emb, truth) for (faces, emb), (_, truth) in zip(results, scenes)]
        boxes = [[f.box for f in faces] for faces, _ in results]
        by_size, recall, first, first_by_size = score(scenes, boxes, rank1)
        report[name] = {"recall": recall, "right_person_first": first, "recall_by_size": by_size,
                        "right_person_first_by_size": first_by_size, "images_per_s": round(len(scenes) / seconds, 3)}
        print(json.dumps({name: report[name]}), flush=True)
    if not args.skip_face_recognition:
        import face_recognition
        fr_gallery = np.array([face_recognition.face_encodings(
            np.asarray(load_image(p)), known_face_locations=[(int(0.33 * 150), int(0.71 * 150), int(0.72 * 150), int(0.30 * 150))])[0]
            for p in gallery_paths])
        started = time.perf_counter()
        results = []
        for n in range(len(scenes)):
            pixels = face_recognition.load_image_file(folder / f"scene_{n:03d}.jpg")
            locations = face_recognition.face_locations(pixels, number_of_times_to_upsample=1)
            results.append((locations, np.array(face_recognition.face_encodings(pixels, locations))))
        seconds = time.perf_counter() - started
        rank1 = [(lambda emb, truth: lambda t, i: int(gallery_people[np.argmin(np.linalg.norm(fr_gallery - emb[i], axis=1))]
                                                       == truth[t][3].parent.name))(emb, truth)
                 for (_, emb), (_, truth) in zip(results, scenes)]
        boxes = [[(left, top, right, bottom) for top, right, bottom, left in locations] for locations, _ in results]
        by_size, recall, first, first_by_size = score(scenes, boxes, rank1)
        report["face_recognition_hog_upsampled_once"] = {"recall": recall, "right_person_first": first,
                                                         "recall_by_size": by_size,
                                                         "right_person_first_by_size": first_by_size,
                                                         "images_per_s": round(len(scenes) / seconds, 3)}
        print(json.dumps({"face_recognition": report["face_recognition_hog_upsampled_once"]}), flush=True)
        report["blazeface_speed_vs_face_recognition"] = round(
            report["blazeface"]["images_per_s"] / report["face_recognition_hog_upsampled_once"]["images_per_s"], 2)
    if not args.skip_no_face:
        photos = [path for p in test_people for path in list_images(root / p)]
        if args.no_face_photos:
            photos = photos[:args.no_face_photos]
        missing = {name: 0 for name in ("blazeface", "hog")}
        for path in photos:
            image = load_image(path)
            for name, detector in (("blazeface", blaze), ("hog", hog)):
                missing[name] += not detector(image)
        report["held_out_lfw_photos"] = len(photos)
        report["no_face_share"] = {name: round(count / len(photos), 5) for name, count in missing.items()}
        report["no_face_count"] = missing
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
