"""Model checkpoints: one file carries everything needed to use a model.

A checkpoint holds the architecture, embedding size, preprocessing (input size, crop,
normalisation), species, its operating points (verification thresholds chosen on held-out
identities, with the true and false accept rates they gave there), and how it was trained. `load_model` needs only this module and `models`: no training code,
no network. Bundled models are found by name (BUNDLED_MODELS) in
$FACESEARCH_MODELS when set, else in the package data folder faces/bundled/ (installed with
the package, read through importlib.resources).
"""
from __future__ import annotations

import hashlib
import json
import os
from importlib import resources
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import ModelError
from .imaging import Preprocess
from .models import EnsembleNet, EmbeddingNet, inference_copy, network_from
from .open_set import GalleryCalibration, MatchRule, parse_fpir
from .precision import compute_precision
from .thresholds import DEFAULT_OPERATING_POINT, OPERATING_POINTS

FORMAT = "facesearch-embedding/1"
BUNDLED_MODELS = ("human", "human-dlib", "human-fast", "dog", "dog-fast", "dog-2net")
DEFAULT_MODEL = "human"
def models_dir() -> Path:
    """Where bundled models are looked up: $FACESEARCH_MODELS, else faces/bundled/."""
    if os.environ.get("FACESEARCH_MODELS"):
        return Path(os.environ["FACESEARCH_MODELS"])
    return Path(resources.files(__package__) / "bundled")   # a plain folder: installs are not zipped


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    text = str(name_or_path)
    if text in BUNDLED_MODELS:
        path = models_dir() / f"{text}.pt"
        if not path.is_file():
            raise ModelError(f"bundled model {text!r} not found at {path}")
        return path
    path = Path(text)
    if not path.is_file():
        raise ModelError(f"{text}: no such model file (bundled models: {', '.join(BUNDLED_MODELS)})")
    return path


def bundled_model_with(recorded: str) -> str | None:
    """The bundled model whose embeddings have this digest (what an index records), if any.
    A bundled name can come to mean a better model (`dog` became an ensemble, the network it
    was ships as `dog-fast`; then three networks, the two it was ship as `dog-2net`): an index
    built with the old one still finds its model. Reads
    every bundled checkpoint, so it is only asked when the recorded name no longer fits."""
    for name in BUNDLED_MODELS:
        path = models_dir() / f"{name}.pt"
        if path.is_file() and embedding_sha256(read_checkpoint(path)) == recorded:
            return name
    return None


def embedding_sha256(payload: dict) -> str:
    """What decides the embeddings a checkpoint gives (architecture, size, preprocessing, flip
    averaging, weights) as one digest: an index records it and accepts only a model with the
    same. Operating points and stranger statistics are left out, so a checkpoint that
    `trainer calibrate` rewrote still serves the indexes built with it."""
    described = {key: payload.get(key) for key in ("arch", "embedding_dim", "preprocess", "flip_average")}
    if payload.get("members"):      # an ensemble's members' input sizes (absent elsewhere: digests stay)
        described["members"] = payload["members"]
    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode())
    for name in sorted(payload["state_dict"]):
        digest.update(name.encode())
        digest.update(payload["state_dict"][name].contiguous().numpy().tobytes())
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class FaceModel:
    """A loaded embedding model ready for inference."""

    net: EmbeddingNet | EnsembleNet
    preprocess: Preprocess
    species: str
    threshold: float            # the default (strict) operating point's distance
    name: str = "unnamed"
    sha256: str = ""            # embedding_sha256: the embeddings it gives, not the file
    path: Path | None = None     # the checkpoint file it was loaded from
    info: dict = field(default_factory=dict)
    flip_average: bool = False   # embed each face and its mirror image, and average the two
    operating_points: dict = field(default_factory=dict)   # {"strict": {"threshold", "tar", "far"}, ...}
    precision: str = "float32"   # what the network computes in (faces.precision); vectors are float32
    # Stranger statistics for thresholds that follow a gallery's size (faces.open_set);
    # None for checkpoints calibrated before them, which keep the per-pair strict rule.
    open_set: GalleryCalibration | None = None
    _inference_net: torch.nn.Module | None = field(default=None, init=False, repr=False, compare=False)

    def is_recorded_as(self, recorded: str) -> bool:
        """Whether an index's recorded model digest is this model: its embedding digest, or,
        for an index built before facesearch recorded that, this very file's sha256 (hashed
        only then: loading a model stays one read of the file)."""
        return recorded == self.sha256 or (self.path is not None and recorded == file_sha256(self.path))

    @property
    def inference_net(self) -> torch.nn.Module:
        """What embedding runs: `net` with its scale-and-shift layers folded into the
        convolutions, channels-last (models.inference_copy), in `precision` (its own copy of
        the weights, so no call casts them again); made once. `net` stays as trained."""
        if self._inference_net is None:
            self._inference_net = inference_copy(self.net).to(
                torch.bfloat16 if self.precision == "bfloat16" else torch.float32)
        return self._inference_net

    def operating_point(self, choice: str | float | None = None) -> dict:
        """{"name", "threshold", "tar", "far"} of an operating point name (strict, balanced),
        or {"name": "custom", "threshold": value, ...} for a distance given as a number.
        tar and far are None where the checkpoint has no measurement (old checkpoints, and
        custom values)."""
        choice = DEFAULT_OPERATING_POINT if choice is None else choice
        if isinstance(choice, str) and choice.strip().lower() in OPERATING_POINTS:
            name = choice.strip().lower()
            point = self.operating_points.get(name) or {"threshold": self.threshold}
            return {"name": name, "threshold": float(point["threshold"]),
                    "tar": point.get("tar"), "far": point.get("far")}
        try:
            value = float(choice)
        except (TypeError, ValueError):
            value = float("nan")
        if not 0.0 < value <= 2.0:   # also refuses nan
            raise ModelError(f"threshold {choice!r}: expected {' or '.join(OPERATING_POINTS)}, or a "
                             f"distance between 0 and 2")
        return {"name": "custom", "threshold": value, "tar": None, "far": None}

    def match_rule(self, individuals: int, faces: int, fpir: float | str | None = None,
                   threshold: str | float | None = None) -> MatchRule:
        """The rule that decides `match` and names a face in a gallery of this size: by default
        the threshold that keeps stranger searches naming someone at `fpir` (default 4%);
        `threshold` (an operating point name or a distance) decides per pair instead."""
        if threshold is None and self.open_set is not None:
            target = parse_fpir(fpir)
            return MatchRule("fpir", self.open_set.threshold(target, individuals, faces), target, individuals, faces,
                             self.open_set)
        if fpir is not None and threshold is None:
            parse_fpir(fpir)   # a bad value is refused even where it cannot be used
        point = self.operating_point(threshold)
        limit = point.pop("threshold")
        message = None
        if threshold is None:
            message = (f"model {self.name} has no gallery statistics, so 'match' uses its per-pair strict "
                       f"threshold and strangers are named more often as the gallery grows; recalibrate it: "
                       f"trainer calibrate --model {self.name} --data HELD_OUT --pairs PAIRS --out NEW.pt")
        implied = self.open_set.fpir_at(limit, individuals, faces) if self.open_set is not None else None
        return MatchRule("per-pair", limit, implied, individuals, faces, self.open_set, point, message)

    def threshold_for(self, choice: str | float | None = None) -> float:
        """The distance threshold (same individual if distance <= it) of an operating point
        name or a number; None means the default (strict)."""
        return self.operating_point(choice)["threshold"]

    @property
    def embedding_dim(self) -> int:
        return self.net.embedding_dim

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @torch.inference_mode()
    def embed_tensor(self, batch: torch.Tensor) -> np.ndarray:
        """uint8 N x 3 x S x S crops -> float32 N x D unit vectors."""
        net = self.inference_net
        inputs = self.preprocess.normalise(batch.to(self.device)).to(next(net.parameters()).dtype).contiguous(
            memory_format=torch.channels_last)
        vectors = net(inputs).float()
        if self.flip_average:
            vectors = vectors + net(inputs.flip(3)).float()
        # Unit length in float32, whatever the network computed in.
        return torch.nn.functional.normalize(vectors, dim=1).cpu().numpy()

    def embed_crops(self, crops: torch.Tensor, batch_size: int = 128) -> np.ndarray:
        """uint8 N x 3 x S x S crops, any number of them, embedded a batch at a time."""
        if not len(crops):
            return np.empty((0, self.embedding_dim), dtype=np.float32)
        return np.concatenate([self.embed_tensor(crops[i:i + batch_size]) for i in range(0, len(crops), batch_size)])

    def embed_images(self, images, batch_size: int = 64) -> np.ndarray:
        """Aligned face images (a detector's `Face.image`) -> float32 N x D unit vectors."""
        crops = [self.preprocess.to_uint8(image) for image in images]
        if not crops:
            return np.empty((0, self.embedding_dim), dtype=np.float32)
        return np.concatenate([self.embed_tensor(torch.stack(crops[i:i + batch_size]))
                               for i in range(0, len(crops), batch_size)])

    def embed_cropped(self, images, batch_size: int = 64) -> np.ndarray:
        """Pictures that are each one face crop (LFW, DogFaceNet), aligned as the model asks
        (the 'none' detector), -> float32 N x D unit vectors."""
        from .detectors import get_detector
        face_of = get_detector("none", self.preprocess)
        return self.embed_images([face_of(image)[0].image for image in images], batch_size)


def save_checkpoint(path: str | os.PathLike, net: EmbeddingNet | EnsembleNet, preprocess: Preprocess,
                    species: str, threshold: float, training: dict | None = None,
                    half: bool = True, operating_points: dict | None = None,
                    flip_average: bool = False) -> None:
    """Write a checkpoint. With `operating_points` (trainer.evaluate.operating_points), the
    stored threshold is their strict one and `threshold` is ignored."""
    state = {key: (value.half() if half and value.is_floating_point() else value).cpu()
             for key, value in net.state_dict().items()}
    payload = {"format": FORMAT, "arch": net.arch, "embedding_dim": net.embedding_dim,
               "preprocess": preprocess.to_dict(), "species": species,
               "threshold": float(threshold), "flip_average": flip_average, "training": training or {},
               "state_dict": state}
    if isinstance(net, EnsembleNet):
        payload["members"] = net.specs()
    if operating_points:
        _set_operating_points(payload, operating_points)
    _write_payload(payload, path)


def write_operating_points(path: str | os.PathLike, operating_points: dict,
                           out: str | os.PathLike | None = None,
                           flip_average: bool | None = None) -> Path:
    """Store operating points in an existing checkpoint (in place, or as a copy at `out`),
    with the flip averaging they were measured with when given; the weights are untouched.
    Returns the file written."""
    payload = read_checkpoint(path)
    _set_operating_points(payload, operating_points)
    if flip_average is not None:
        payload["flip_average"] = flip_average
    target = Path(out) if out is not None else Path(path)
    _write_payload(payload, target)
    return target


def _set_operating_points(payload: dict, operating_points: dict) -> None:
    """Operating points as trainer.evaluate.calibrate measures them; their "open_set" part
    (the stranger statistics, when measured) is stored beside them."""
    operating_points = dict(operating_points)
    missing = [name for name in OPERATING_POINTS if name not in operating_points]
    if missing:
        raise ModelError(f"operating points {', '.join(missing)} missing")
    open_set = operating_points.pop("open_set", None)
    if open_set is not None:
        payload["open_set"] = open_set
    payload["operating_points"] = operating_points
    payload["threshold"] = float(operating_points[DEFAULT_OPERATING_POINT]["threshold"])


def _write_payload(payload: dict, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(payload, temporary)
    os.replace(temporary, path)   # never leave a half-written checkpoint behind


def read_checkpoint(path: str | os.PathLike) -> dict:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file; all mean the same
        raise ModelError(f"{path}: not a readable facesearch checkpoint ({type(error).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelError(f"{path}: not a facesearch checkpoint (format {FORMAT} expected)")
    return payload


def load_recorded_model(source: str, recorded: str, device: str | None = None) -> FaceModel:
    """The model an index recorded as `source` (a bundled name or a path) with embedding
    digest `recorded`: a bundled name that now means another model gives way to the bundled
    model that still has that digest (`bundled_model_with`). The caller checks the digest
    (`is_recorded_as`) either way, so a model that is nowhere to be found is still refused."""
    model = load_model(source, device)
    if source in BUNDLED_MODELS and not model.is_recorded_as(recorded):
        renamed = bundled_model_with(recorded)
        if renamed is not None:
            return load_model(renamed, device)
    return model


def float_state(payload: dict) -> dict:
    """A checkpoint's weights as a network loads them: float32 (they are stored in float16)."""
    return {key: value.float() if value.is_floating_point() else value
            for key, value in payload["state_dict"].items()}


def load_model(name_or_path: str | os.PathLike = DEFAULT_MODEL, device: str | None = None,
               precision: str | None = None) -> FaceModel:
    path = resolve_model_path(name_or_path)
    payload = read_checkpoint(path)
    net = network_from(payload["arch"], payload["embedding_dim"], payload.get("members"))
    net.load_state_dict(float_state(payload))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    net.to(device).eval()
    name = str(name_or_path)   # a bundled name, or the path as the user gave it
    return FaceModel(net=net, preprocess=Preprocess.from_dict(payload["preprocess"]),
                     species=payload["species"], threshold=payload["threshold"], name=name,
                     sha256=embedding_sha256(payload), path=path,
                     info=payload.get("training", {}),
                     flip_average=bool(payload.get("flip_average", False)),
                     # Checkpoints from before operating points: their one threshold serves all.
                     operating_points=payload.get("operating_points", {}),
                     precision=compute_precision(device, precision),
                     open_set=GalleryCalibration.from_dict(payload["open_set"]) if payload.get("open_set") else None)
