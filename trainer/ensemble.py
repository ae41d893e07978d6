"""Trained embedding networks joined into one model (`trainer ensemble`).

Members must embed the same species aligned the same way; each keeps its own crop and input
size: the ensemble takes the widest crop (each member sees its own centre of it) at a size that
enlarges no member's part, with the first member's pixel scaling,
rescaled for a member that scales pixels otherwise (see faces.models.EnsembleNet). Its
embedding is the members' side by side, each weighted as `--weights` says, so an ensemble costs the members' embedding times
added. The joined checkpoint has no operating points of its own until `trainer calibrate`
measures them on held-out identities.
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from faces.checkpoint import float_state, read_checkpoint, resolve_model_path, save_checkpoint
from faces.errors import ModelError
from faces.imaging import Preprocess
from faces.models import ENSEMBLE, EnsembleNet

# What each member must share: how the detector aligns the face. Their crops may differ: the
# ensemble takes the widest, and each member sees the centre its own crop keeps (`view`).
SHARED_PREPROCESS = ("alignment",)
# A training run's identity split (trainer.train's config); members trained on one split
# give the ensemble that split, so its held-out identities are known.
SPLIT_KEYS = ("data", "seed", "choose_fraction", "test_fraction")


def rescale(ensemble: dict, member: dict) -> dict:
    """The per-channel scale and shift that turn pixels normalised as `ensemble` says into
    pixels normalised as `member` says ((p - mean) / std each); {} where they are the same."""
    if ensemble["mean"] == member["mean"] and ensemble["std"] == member["std"]:
        return {}
    return {"input_scale": [e / m for e, m in zip(ensemble["std"], member["std"])],
            "input_shift": [(e - m) / s for e, m, s in zip(ensemble["mean"], member["mean"], member["std"])]}


def extent(crop: Preprocess) -> float:
    """How much of the face a member's input spans, in one unit for every member of an
    alignment: a dlib chip spans the landmarks' extent plus its padding each side, then
    `crop` of that; an LFW-framed face, `crop` of the LFW image."""
    return crop.crop * ((1 + 2 * crop.chip_padding) if crop.alignment == "dlib_chip" else 1.0)


def parse_weights(text: str, count: int) -> list[float]:
    """`--weights` as numbers, one positive finite number for each of `count` models."""
    parts = [part.strip() for part in text.split(",")]
    try:
        weights = [float(part) for part in parts]
    except ValueError:
        weights = []
    if len(weights) != count or not all(0 < w < math.inf for w in weights):
        raise ModelError(f"--weights {text!r}: expected {count} positive numbers, comma-separated, one for each model")
    return weights


def join(models: list[str], out: str | Path, command: str = "", weights: list[float] | None = None) -> dict:
    """Write the ensemble of these checkpoints (bundled names or paths) to `out`, each counting
    as `weights` says (default: the same); returns what was written: the file, its embedding
    size, members and placeholder threshold."""
    if len(models) < 2:
        raise ModelError("an ensemble needs at least two models")
    weights = weights or [1.0] * len(models)
    if len(weights) != len(models):
        raise ModelError(f"{len(weights)} weights for {len(models)} models")
    payloads = [read_checkpoint(resolve_model_path(name)) for name in models]
    for name, payload in zip(models, payloads):
        if payload["arch"] == ENSEMBLE:
            raise ModelError(f"{name}: already an ensemble; list its members instead")
    first = payloads[0]
    preprocesses = [Preprocess.from_dict(payload["preprocess"]) for payload in payloads]
    crops = [preprocess.to_dict() for preprocess in preprocesses]
    for name, payload, crop in zip(models[1:], payloads[1:], crops[1:]):
        if payload["species"] != first["species"]:
            raise ModelError(f"{name}: a {payload['species']} model cannot join {models[0]}, a {first['species']} model")
        different = [key for key in SHARED_PREPROCESS if crop[key] != crops[0][key]]
        if different:
            raise ModelError(f"{name}: its {', '.join(different)} differ from {models[0]}'s; an ensemble's "
                             f"members see one aligned face")
    # The widest member's crop is the ensemble's; the others see its centre, and the input is
    # large enough that no member's part of it is enlarged.
    widest = max(preprocesses, key=extent)
    views = [extent(preprocess) / extent(widest) for preprocess in preprocesses]
    size = max(math.ceil(preprocess.input_size / view - 1e-9) for preprocess, view in zip(preprocesses, views))
    net = EnsembleNet([{"arch": p["arch"], "embedding_dim": p["embedding_dim"],
                        "input_size": p["preprocess"]["input_size"], **rescale(crops[0], crop), "weight": weight,
                        "view": view}
                       for p, crop, weight, view in zip(payloads, crops, weights, views)])
    for member, payload in zip(net.members, payloads):
        member.load_state_dict(float_state(payload))
    preprocess = replace(preprocesses[0], input_size=size, crop=widest.crop, chip_padding=widest.chip_padding)
    # Until calibrated: a pair's squared distance is the weighted mean of the members', so is the threshold's.
    threshold = math.sqrt(sum(w * w * p["threshold"] ** 2 for w, p in zip(weights, payloads))
                          / sum(w * w for w in weights))
    training = {"command": command, "members": [str(name) for name in models]}
    splits = [{key: payload.get("training", {}).get("config", {}).get(key) for key in SPLIT_KEYS}
              for payload in payloads]
    if splits[0]["seed"] is not None and all(split == splits[0] for split in splits):
        training["config"] = splits[0]
        trained_on = {payload["training"].get("identities") for payload in payloads}
        if len(trained_on) == 1:
            training["identities"] = trained_on.pop()
    save_checkpoint(out, net.eval(), preprocess, first["species"], threshold, training=training,
                    flip_average=all(p.get("flip_average", False) for p in payloads))
    return {"model": str(out), "embedding_dim": net.embedding_dim, "members": net.specs(), "threshold": threshold}
