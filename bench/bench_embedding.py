"""Training and inference throughput of the embedding models, on this machine's CPU
(or GPU when there is one).

1. Training images/s of each backbone (forward + backward + step on a P x K batch with the
   batch-hard triplet loss), as a ratio to the `small` backbone measured in the same run.
2. Inference: the bundled models embed real face crops in batches; face_recognition (dlib's
   ResNet, what users would pick instead) encodes the same crops one by one in the same
   process, and the ratio ours / dlib is printed.
3. The inference copy (faces.models.inference_copy: scale-and-shift layers folded into the
   convolutions, channels-last) against the network as trained, on the same batch in the
   same process, in CPU seconds of one thread (so a busy machine skews it least).

    python bench/bench_embedding.py [--images 200] [--steps 3] [--json]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from faces.checkpoint import BUNDLED_MODELS, load_model
from trainer.data import scan_identities
from faces.imaging import load_image
from trainer.losses import TripletLoss
from trainer.miners import BatchHardMiner
from faces.architectures import DEFAULT_INPUT_SIZE
from faces.models import EmbeddingNet

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "lfw" / "images"


def training_throughput(arch: str, steps: int, batch: int = 64) -> float:
    torch.manual_seed(0)
    size = DEFAULT_INPUT_SIZE[arch]
    net = EmbeddingNet(arch).train()
    loss = TripletLoss(BatchHardMiner())
    optimizer = torch.optim.AdamW(net.parameters(), 1e-3)
    images = torch.randn(batch, 3, size, size)
    labels = torch.arange(batch) // 4
    def step():
        optimizer.zero_grad()
        loss(net(images), labels).loss.backward()
        optimizer.step()
    step()  # warm-up: allocator and kernel selection
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - started)


def inference_throughput(model_name: str, images, batch: int = 64) -> float:
    model = load_model(model_name, device="cpu")
    model.embed_images(images[:batch])  # warm-up
    started = time.perf_counter()
    model.embed_images(images, batch_size=batch)
    return len(images) / (time.perf_counter() - started)


def inference_copy_gain(model_name: str, repeats: int = 6, batch: int = 32) -> float:
    """CPU seconds of the trained network / of its inference copy, on one thread."""
    model = load_model(model_name, device="cpu")
    size = model.preprocess.input_size
    plain = torch.randn(batch, 3, size, size)
    channels_last = plain.contiguous(memory_format=torch.channels_last)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    seconds = {"trained": [], "inference": []}
    try:
        with torch.inference_mode():
            for _ in range(repeats):   # interleaved, so drifting load hits both alike
                for key, net, inputs in (("trained", model.net, plain),
                                         ("inference", model.inference_net, channels_last)):
                    started = time.process_time()
                    net(inputs)
                    seconds[key].append(time.process_time() - started)
    finally:
        torch.set_num_threads(threads)
    # the first round warms up allocators and kernel choices
    return min(seconds["trained"][1:]) / min(seconds["inference"][1:])


def dlib_throughput(images) -> float | None:
    try:
        import face_recognition
    except ImportError:
        return None
    arrays = [np.asarray(image) for image in images]
    # LFW crops: give dlib the central face box so only landmarks + encoding are timed,
    # as our models get the crop without detection.
    boxes = [[(a.shape[0] // 4, 3 * a.shape[1] // 4, 3 * a.shape[0] // 4, a.shape[1] // 4)] for a in arrays]
    face_recognition.face_encodings(arrays[0], boxes[0])
    started = time.perf_counter()
    for array, box in zip(arrays, boxes):
        face_recognition.face_encodings(array, box)
    return len(arrays) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--archs", default="small,resnet18,inception_resnet_v1")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = {"threads": torch.get_num_threads(), "training_images_per_s": {}, "inference_images_per_s": {}}
    for arch in args.archs.split(","):
        report["training_images_per_s"][arch] = round(training_throughput(arch, args.steps), 1)
    base = report["training_images_per_s"].get("small")
    if base:
        report["training_ratio_to_small"] = {a: round(v / base, 3) for a, v in report["training_images_per_s"].items()}

    samples = scan_identities(DATA)[: args.images]
    images = [load_image(s.path) for s in samples]
    for name in BUNDLED_MODELS:
        report["inference_images_per_s"][name] = round(inference_throughput(name, images), 1)
    report["inference_copy_speedup"] = {name: round(inference_copy_gain(name), 2) for name in BUNDLED_MODELS}
    dlib = dlib_throughput(images)
    if dlib:
        report["inference_images_per_s"]["face_recognition (dlib)"] = round(dlib, 1)
        report["inference_ratio_to_dlib"] = {n: round(report["inference_images_per_s"][n] / dlib, 2)
                                             for n in BUNDLED_MODELS}
    if args.json:
        print(json.dumps(report))
        return
    for key, value in report.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
