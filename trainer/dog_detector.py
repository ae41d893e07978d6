"""Training the dog face detector (`trainer train-dog-detector`).

1. Windows: scenes of training dogs pasted onto backgrounds (trainer/composites.py), cut into
   48 px windows labelled face, part of a face (regression only) or background.
2. The network (faces.detectors.dog.build_network) learns a face score (binary cross-entropy on
   faces and background) and the offsets from each window to its face (smooth L1 on faces
   and parts). Optionally it starts from an earlier detector (`init`) and first collects
   that detector's mistakes as hard negatives (`hard_negative_pictures`): what it still
   calls a face in pictures without a dog (portraits, people's photos filling a scene,
   scenes of backgrounds only), cut out as its refinement sees them.
3. Thresholds, chosen with the whole detector on pictures it never trained on: held-out
   scenes of the same training dogs (recall at IoU 0.5) and pictures without a dog (LFW
   portraits, grey, noise; at most `max_false_rate` of them may show a face).

Only the dogs of `trainer split`'s training half are used, so the dog model's held-out dogs
stay unseen by the detector too.
"""
from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from faces.detectors.dog import WINDOW, DogFaceDetector, build_network, cut_square, pixels_to_input, square_iou
from .composites import ImageSource, fill, make_scene, make_windows

log = logging.getLogger(__name__)
HARD_NEGATIVE_REPEATS = 5


def no_dog_pictures(people_paths: list[Path], count: int, seed: int) -> list[Image.Image]:
    """Pictures a dog index must find no face in: human portraits, flat grey and noise."""
    rng = random.Random(seed)
    numbers = np.random.default_rng(seed)
    pictures = []
    for i in range(count):
        kind = i % 4
        if kind < 2:
            pictures.append(Image.open(rng.choice(people_paths)).convert("RGB"))
        elif kind == 2:
            grey = rng.randrange(256)
            pictures.append(Image.new("RGB", (rng.choice([224, 400, 800]),) * 2, (grey,) * 3))
        else:
            side = rng.choice([224, 400, 600])
            pictures.append(Image.fromarray(numbers.integers(0, 256, (side, side, 3), dtype=np.uint8)))
    return pictures


def train_network(data: dict, epochs: int, batch_size: int, lr: float, seed: int,
                  init: dict | None = None) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = build_network()
    if init is not None:
        net.load_state_dict({k: v.float() for k, v in init.items()})
    pixels = torch.from_numpy(data["pixels"])
    labels = torch.from_numpy(data["labels"].astype(np.int64))
    offsets = torch.from_numpy(data["offsets"])
    optimiser = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = max(1, len(labels) // batch_size)   # a last partial batch is left for the next epoch
    steps = epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, lr, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(labels), generator=generator)
        started, totals = time.time(), np.zeros(2)
        for step in range(steps_per_epoch):
            idx = order[step * batch_size:(step + 1) * batch_size]
            batch = pixels[idx]
            if torch.rand(1, generator=generator).item() < 0.5:
                # A mirrored window is as much a face; its x offset and tilt change sign.
                batch = batch.flip(2)
                target = offsets[idx] * torch.tensor([-1.0, 1.0, 1.0, -1.0])
            else:
                target = offsets[idx]
            out = net(pixels_to_input(batch.numpy()))[:, :, 0, 0]
            label = labels[idx]
            scored = label >= 0
            score_loss = F.binary_cross_entropy_with_logits(out[scored, 0], label[scored].float())
            placed = label != 0
            box_loss = F.smooth_l1_loss(out[placed, 1:], target[placed], beta=0.1) if placed.any() else out.sum() * 0
            loss = score_loss + 2.0 * box_loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            totals += (score_loss.item(), box_loss.item())
        totals /= steps_per_epoch
        log.info("epoch %d: score loss %.4f, box loss %.4f, %.0f s", epoch + 1, *totals, time.time() - started)
    net.eval()
    return net


def hard_negatives(detector: DogFaceDetector, people_paths: list[Path], dog_paths: list[Path], count: int,
                   seed: int, min_score: float = 0.3) -> np.ndarray:
    """48 px windows (N x 48 x 48 x 3 uint8) that the detector scores min_score or more in
    `count` pictures without a dog, cut as its last refinement pass sees them."""
    rng = random.Random(seed)
    people, dogs = ImageSource(people_paths, rng), ImageSource(dog_paths, rng)
    threshold = detector.threshold
    detector.threshold = min_score
    windows = []
    try:
        for i in range(count):
            kind = i % 3
            if kind == 0:
                picture = people.pick()
            elif kind == 1:
                picture = fill(people.pick(), rng.choice([(640, 480), (480, 640), (500, 500)]), rng)
            else:
                picture = make_scene(dogs, people, rng, faces=0).image   # background alone, no dog face
            for _, square in detector.find(picture):
                windows.append(np.asarray(cut_square(picture, square, WINDOW)))
    finally:
        detector.threshold = threshold
    return np.stack(windows) if windows else np.zeros((0, WINDOW, WINDOW, 3), np.uint8)


def best_scores(detector: DogFaceDetector, pictures) -> list[list[tuple[float, object]]]:
    """Every refined candidate (score, square) of each picture, thresholds off."""
    threshold = detector.threshold
    detector.threshold = 0.0
    try:
        return [detector.find(picture) for picture in pictures]
    finally:
        detector.threshold = threshold


def choose_threshold(detector: DogFaceDetector, scenes, no_dogs, max_false_rate: float) -> dict:
    """The lowest final score threshold at which at most max_false_rate of the no-dog pictures
    show a face, and what it gives: recall at IoU 0.5 and false detections per scene."""
    negative_best = sorted((max((s for s, _ in found), default=0.0) for found in best_scores(detector, no_dogs)),
                           reverse=True)
    allowed = int(max_false_rate * len(negative_best))
    threshold = min(0.99, max(0.5, negative_best[allowed] + 1e-4 if allowed < len(negative_best) else 0.5))
    found = best_scores(detector, [scene.image for scene in scenes])
    hits = faces = false = 0
    for scene, candidates in zip(scenes, found):
        kept = [square for score, square in candidates if score >= threshold]
        faces += len(scene.faces)
        hits += sum(any(square_iou(face, square) >= 0.5 for square in kept) for face in scene.faces)
        false += sum(all(square_iou(face, square) < 0.5 for face in scene.faces) for square in kept)
    no_dog_rate = sum(score >= threshold for score in negative_best) / len(negative_best)
    return {"threshold": threshold, "recall_iou_0.5": hits / max(1, faces),
            "false_per_scene": false / max(1, len(scenes)), "no_dog_pictures_with_a_face": no_dog_rate,
            "scenes": len(scenes), "no_dog_pictures": len(no_dogs)}


def train_dog_detector(dog_paths: list[Path], people_paths: list[Path], threshold_people: list[Path],
                       out: Path, scenes: int,
                       epochs: int, batch_size: int, lr: float, seed: int, max_false_rate: float,
                       command: str, check_scenes: int = 150, check_pictures: int = 200,
                       init: Path | None = None, hard_negative_pictures: int = 0) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    log.info("cutting windows from %d scenes of %d training dog images", scenes, len(dog_paths))
    data = make_windows(dog_paths, people_paths, scenes, seed)
    counts = {name: int((data["labels"] == value).sum()) for name, value in (("faces", 1), ("parts", -1), ("background", 0))}
    log.info("windows: %s (%.0f s)", counts, time.time() - started)
    init_state = None
    if init is not None:
        init_state = torch.load(init, map_location="cpu", weights_only=False)["state_dict"]
    if hard_negative_pictures:
        if init is None:
            raise ValueError("hard negatives are an earlier detector's mistakes: give init")
        mined = hard_negatives(DogFaceDetector(model_path=init), people_paths, dog_paths, hard_negative_pictures,
                               seed + 3)
        counts["hard_negatives"] = len(mined)
        log.info("%d hard negatives from %d no-dog pictures (%.0f s)", len(mined), hard_negative_pictures,
                 time.time() - started)
        # A few thousand mistakes among ~170,000 windows would hardly move the loss: each
        # is shown HARD_NEGATIVE_REPEATS times an epoch.
        mined = np.repeat(mined, HARD_NEGATIVE_REPEATS, axis=0)
        data = {"pixels": np.concatenate([data["pixels"], mined]),
                "labels": np.concatenate([data["labels"], np.zeros(len(mined), np.int8)]),
                "offsets": np.concatenate([data["offsets"], np.zeros((len(mined), 4), np.float32)])}
    net = train_network(data, epochs, batch_size, lr, seed, init_state)
    # Proposals keep windows scoring at least this: low, since refinement decides.
    payload = {"state_dict": {k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()},
               "proposal_threshold": 0.3, "threshold": 0.5, "trained_with": command,
               "windows": counts, "scenes": scenes, "epochs": epochs, "seed": seed}
    path = out / "dog-detector.pt"
    torch.save(payload, path)
    payload = set_threshold(path, dog_paths, threshold_people, seed, max_false_rate, check_scenes, check_pictures)
    payload["seconds"] = round(time.time() - started)
    torch.save(payload, path)
    (out / "dog-detector.json").write_text(json.dumps({k: v for k, v in payload.items() if k != "state_dict"}, indent=2))
    return {k: v for k, v in payload.items() if k != "state_dict"}


def set_threshold(path: Path, dog_paths: list[Path], threshold_people: list[Path], seed: int,
                  max_false_rate: float, check_scenes: int = 150, check_pictures: int = 200) -> dict:
    """Choose the detector checkpoint's score threshold (choose_threshold) on new scenes of
    the training dogs over `threshold_people`'s photos and on no-dog pictures of those
    people; store it with what it gave. Returns the checkpoint's payload."""
    detector = DogFaceDetector(model_path=path)
    rng = random.Random(seed + 1)
    dogs, people = ImageSource(dog_paths, rng), ImageSource(threshold_people, rng)
    scenes_to_check = [make_scene(dogs, people, rng, size=(640, 480), faces=1) for _ in range(check_scenes)]
    chosen = choose_threshold(detector, scenes_to_check, no_dog_pictures(threshold_people, check_pictures, seed + 2),
                              max_false_rate)
    payload = torch.load(path, map_location="cpu", weights_only=False)
    payload["threshold"] = chosen["threshold"]
    payload["validation"] = chosen
    torch.save(payload, path)
    return payload
