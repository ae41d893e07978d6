"""A large photo's query cost against an LFW photo's, per detector, in one run.

A warm `QueryEngine` (one torch thread) over a small index of LFW photos answers, in turn,
the large photo (default: the 1665 x 2048 portrait in ../shared/data/samples) and each of
--lfw-photos LFW photos of people not in the index, interleaved so a shared machine's load
falls on both alike. Cost is the engine's own timings: detect + embed + search (the photo
already decoded; decoding is reported apart). Printed: the median of each part, the total
and the ratio large / LFW, per detector.

    python bench/query_cost.py [--detectors blazeface,hog] [--photo PATH] [--rounds 5] [--min-face-fraction F] [--relative-min-face R]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from faces.imaging import load_image  # noqa: E402
from indexer.writer import IndexWriter  # noqa: E402
from search.engine import QueryEngine  # noqa: E402
from trainer.data import scan_identities  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DATA / "lfw" / "images"))
    parser.add_argument("--photo", default=str(DATA / "samples" / "angelina_jolie.jpg"))
    parser.add_argument("--detectors", default="blazeface,hog")
    parser.add_argument("--model", default="human")
    parser.add_argument("--gallery", type=int, default=200, help="LFW photos in the index")
    parser.add_argument("--lfw-photos", type=int, default=20, help="LFW query photos (after the gallery's)")
    parser.add_argument("--rounds", type=int, default=5, help="times the large photo is asked per detector")
    parser.add_argument("--min-face-fraction", type=float, default=None,
                        help="blazeface's smallest face in photos over 1280 px, as a fraction of the shorter "
                             "side (default: its own, 1/75): what a coarser rule would cost")
    parser.add_argument("--relative-min-face", type=float, default=None,
                        help="blazeface looks for faces down to this share of the largest it found (default: its "
                             "own, 0.1): what another rule would cost")
    args = parser.parse_args()
    from faces.detectors import blazeface
    if args.min_face_fraction is not None:
        blazeface.MIN_FACE_FRACTION = args.min_face_fraction
    if args.relative_min_face is not None:
        blazeface.RELATIVE_MIN_FACE = args.relative_min_face
    torch.set_num_threads(1)
    samples = scan_identities(args.data)
    gallery_people = {s.identity for s in samples[:args.gallery]}
    queries = [s.path for s in samples[args.gallery:] if s.identity not in gallery_people][:args.lfw_photos]
    started = time.perf_counter()
    large = load_image(args.photo)
    decode_large = time.perf_counter() - started
    started = time.perf_counter()
    lfw = [load_image(path) for path in queries]
    decode_lfw = (time.perf_counter() - started) / len(lfw)
    result = {"photo": Path(args.photo).name, "min_face_fraction": args.min_face_fraction,
              "relative_min_face": blazeface.RELATIVE_MIN_FACE, "size": list(large.size), "lfw_size": list(lfw[0].size),
              "decode_ms": {"photo": round(1000 * decode_large, 1), "lfw": round(1000 * decode_lfw, 1)},
              "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary) / "gallery"
        for sample in samples[:args.gallery]:
            target = folder / sample.identity / sample.path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(sample.path.resolve())
        with IndexWriter(Path(temporary) / "index", create=True, model=args.model, detector="none",
                         progress=False) as writer:
            writer.build(folder)
        engine = QueryEngine(Path(temporary) / "index")
        detectors = args.detectors.split(",")
        for name in detectors:                      # warm: each detector made and run once
            engine.query(large, detector=name)
            engine.query(lfw[0], detector=name)
        parts = {name: {"photo": [], "lfw": []} for name in detectors}
        for round_ in range(args.rounds):
            for name in detectors:
                parts[name]["photo"].append(engine.query(large, detector=name)["timings_ms"])
                share = lfw[round_::args.rounds] or lfw
                parts[name]["lfw"] += [engine.query(image, detector=name)["timings_ms"] for image in share]
    for name in detectors:
        row = {}
        for which in ("photo", "lfw"):
            medians = {part: statistics.median(t[part] for t in parts[name][which])
                       for part in ("detect", "embed", "search")}
            row[which] = {**{part: round(v, 1) for part, v in medians.items()},
                          "total_ms": round(statistics.median(sum(t[p] for p in ("detect", "embed", "search"))
                                                              for t in parts[name][which]), 1),
                          "queries": len(parts[name][which])}
        row["ratio"] = round(row["photo"]["total_ms"] / row["lfw"]["total_ms"], 2)
        result[name] = row
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
