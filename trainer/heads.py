"""A linear head for one member of an ensemble, learned with our own triplet mining while every
network stays frozen (`trainer head`).

An imported network trained on other photos (HSE FaceRes: VGGFace2; 1,024 pooled features)
carries features that do not tell these photos' people apart. Its backbone stays as it is; a
linear map of its features (to `dim`, without bias, like dlib's own head) is learned on the
training identities of a seeded three-way split, as `trainer train` makes it. Every training
photo and its mirror image go through the networks once; then P x K batches of those vectors
(with one-photo identities added as negatives only) train the map through the ensemble's own
embedding: the other members' vectors fixed, every member at its weight, the triplet loss
over the miner's triplets. The choose identities pick the step (TAR at FAR 1e-3 against every
stranger pair, as `trainer evaluate` measures it). The result is the ensemble with that
member's new head and no operating points: `trainer calibrate` measures them next.
"""
from __future__ import annotations

import json
import logging
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from faces.checkpoint import FaceModel, load_model, save_checkpoint
from faces.errors import ModelError
from faces.models import ENSEMBLE, LINEAR_HEAD_ARCHS, EnsembleNet

from .data import DataError, load_faces, scan_identities
from .ensemble import SPLIT_KEYS
from .evaluate import (REPORT_FPIRS, EvaluationSet, low_far_metrics, open_set_metrics, split_for_training,
                       verification_metrics)
from .losses import TripletLoss
from .miners import make_miner

log = logging.getLogger(__name__)


@dataclass
class HeadConfig:
    model: str
    data: str
    out: str
    member: int = -1            # which member gets the head (default: the last)
    dim: int = 256
    miner: str = "batch-hard"
    margin: float = 0.3
    lr: float = 3e-4
    p: int = 128                # identities per batch ...
    k: int = 2                  # ... photos of each
    singles: int = 200          # one-photo identities added to each batch as negatives
    steps: int = 2000
    eval_every: int = 100
    patience: int = 5           # checks without a better TAR before stopping
    choose_fraction: float = 0.2
    test_fraction: float = 0.2
    seed: int = 0
    progress: bool = True


@torch.inference_mode()
def member_vectors(model: FaceModel, crops: torch.Tensor, member: int, batch_size: int = 64) -> list[torch.Tensor]:
    """Each member's output for every crop and its mirror image (N x 2 x d): the others' unit
    vectors at their weights, as the ensemble joins them; `member`'s backbone features."""
    net: EnsembleNet = model.inference_net
    dtype = next(net.parameters()).dtype
    outputs = [[] for _ in net.members]
    for start in range(0, len(crops), batch_size):
        batch = model.preprocess.normalise(crops[start:start + batch_size].to(model.device)).to(dtype)
        views = [batch, batch.flip(3)]
        for i, (network, scale) in enumerate(zip(net.members, net.scales)):
            per_view = []
            for view in views:
                x = net.member_input(i, view).contiguous(memory_format=torch.channels_last)
                per_view.append(network.backbone(x).float() if i == member else network(x).float() * scale)
            outputs[i].append(torch.stack(per_view, 1))
    return [torch.cat(output) for output in outputs]


def joined(vectors: list[torch.Tensor], member: int, head: nn.Linear, scale: float) -> torch.Tensor:
    """The ensemble's embedding (before flip averaging) with `head` as `member`'s."""
    return torch.cat([F.normalize(head(v), dim=-1) * scale if i == member else v for i, v in enumerate(vectors)], -1)


def flip_averaged(vectors: list[torch.Tensor], member: int, head: nn.Linear, scale: float,
                  flip_average: bool) -> np.ndarray:
    with torch.no_grad():
        both = F.normalize(joined(vectors, member, head, scale), dim=-1)
        return F.normalize(both.sum(1) if flip_average else both[:, 0], dim=-1).numpy()


def choose_metrics(embeddings: np.ndarray, evaluation: EvaluationSet) -> dict:
    """What `trainer evaluate` reports on the choose identities, for picking the step."""
    inputs = evaluation.inputs(embeddings)
    verification = verification_metrics(inputs.pair_distances, inputs.pair_same)
    low_far = low_far_metrics(inputs)
    open_set = open_set_metrics(inputs.embeddings, inputs.labels, REPORT_FPIRS)
    return {"accuracy": verification["accuracy"], "tar_at_far_1e-3": low_far["tar_at_far_1e-3"],
            "tar_at_far_1e-4": low_far["tar_at_far_1e-4"], "rank1": open_set["rank1"],
            "fnir_at_fpir_0.05": open_set["fnir_at_fpir_0.05"], "fnir_at_fpir_0.01": open_set["fnir_at_fpir_0.01"]}


def starting_head(network: nn.Module, features: torch.Tensor, dim: int) -> nn.Linear:
    """The member's own linear head where it has one of this size (dlib's), else the
    features' `dim` principal directions."""
    head = nn.Linear(features.shape[-1], dim, bias=False)
    with torch.no_grad():
        if isinstance(network.head, nn.Linear) and network.head.weight.shape == head.weight.shape:
            head.weight.copy_(network.head.weight)
        else:
            flat = features.reshape(-1, features.shape[-1])
            head.weight.copy_(torch.linalg.svd(flat - flat.mean(0), full_matrices=False)[2][:dim])
    return head


def with_head(net: EnsembleNet, member: int, head: nn.Linear) -> EnsembleNet:
    """A copy of the ensemble whose `member` has `head`."""
    specs = net.specs()
    specs[member]["embedding_dim"] = head.out_features
    result = EnsembleNet(specs)
    for i, (old, new) in enumerate(zip(net.members, result.members)):
        if i == member:
            new.backbone.load_state_dict(old.backbone.state_dict())
            new.head.weight.data.copy_(head.weight.data)
        else:
            new.load_state_dict(old.state_dict())
    return result.eval()


def plot_checks(history: list[dict], chosen: int, path: Path) -> None:
    """The choose identities' TAR at FAR 1e-3 and FNIR at FPIR 0.01 at each check, the chosen step marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = [check["step"] for check in history]
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(steps, [c["tar_at_far_1e-3"] for c in history], marker="o", label="TAR at FAR 1e-3 (picks the step)")
    axis.plot(steps, [1 - c["fnir_at_fpir_0.01"] for c in history], marker="s", label="1 - FNIR at FPIR 0.01")
    axis.axvline(chosen, color="grey", linestyle="--", label=f"chosen: step {chosen}")
    axis.set(xlabel="step", ylabel="choose identities", title="trainer head: checks on the choose identities")
    axis.legend(loc="best")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


class HeadTrainer:
    def __init__(self, config: HeadConfig, command: str | None = None):
        self.config = config
        self.command = command or shlex.join(["trainer"] + sys.argv[1:])
        self.out = Path(config.out)
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.model = load_model(config.model, "cpu")
        if self.model.net.arch != ENSEMBLE:
            raise ModelError(f"{config.model}: not an ensemble; `trainer head` learns one member's head "
                             f"while the others stay as they are")
        members = self.model.net.members
        if not -len(members) <= config.member < len(members):
            raise ModelError(f"--member {config.member}: {config.model} has {len(members)} members (0-{len(members) - 1})")
        self.member = config.member % len(members)
        arch = members[self.member].arch
        if arch not in LINEAR_HEAD_ARCHS:
            raise ModelError(f"member {self.member} of {config.model} is {arch}; a head can be learned for "
                             f"{', '.join(LINEAR_HEAD_ARCHS)} only")
        self.scale = self.model.net.scales[self.member]
        train_root, self.choose = split_for_training(config.data, self.out, config.choose_fraction,
                                                     config.test_fraction, config.seed, self.model.preprocess,
                                                     config.progress)
        samples = scan_identities(train_root)
        crops, kept, _ = load_faces([s.path for s in samples], self.model.preprocess, config.progress,
                                    desc="loading train")
        self.train = member_vectors(self.model, crops, self.member)
        self.identities, self.labels = np.unique([samples[i].identity for i in kept], return_inverse=True)
        counts = np.bincount(self.labels)
        self.enrolled = np.flatnonzero(counts >= 2)
        if len(self.enrolled) < 2:
            raise DataError(f"{config.data}: learning a head needs two or more training identities with two "
                            f"photos or more, found {len(self.enrolled)}")
        self.rows_of = {identity: np.flatnonzero(self.labels == identity) for identity in self.enrolled}
        self.single_rows = np.flatnonzero(counts[self.labels] == 1)
        self.choose_vectors = member_vectors(self.model, self.choose.crops, self.member)
        network = members[self.member]
        self.head = starting_head(network, self.train[self.member], config.dim)
        self.loss = TripletLoss(make_miner(config.miner, config.margin), config.margin,
                                average_over_active=config.miner == "batch-all")
        self.optimizer = torch.optim.Adam(self.head.parameters(), lr=config.lr)

    def batch(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        """P identities x K photos, plus one-photo identities, each photo or its mirror image."""
        config = self.config
        chosen = self.rng.choice(self.enrolled, min(config.p, len(self.enrolled)), replace=False)
        rows = [self.rng.choice(self.rows_of[i], config.k, replace=len(self.rows_of[i]) < config.k) for i in chosen]
        rows.append(self.rng.choice(self.single_rows, min(config.singles, len(self.single_rows)), replace=False))
        rows = torch.as_tensor(np.concatenate(rows).astype(np.int64))
        view = torch.as_tensor(self.rng.integers(0, 2, len(rows)))
        return [v[rows, view] for v in self.train], torch.as_tensor(self.labels[rows.numpy()])

    def check(self) -> dict:
        embeddings = flip_averaged(self.choose_vectors, self.member, self.head, self.scale, self.model.flip_average)
        return choose_metrics(embeddings, self.choose)

    def fit(self) -> dict:
        config = self.config
        history = [{"step": 0, **self.check()}]
        best, best_state, waited = history[0], {k: v.clone() for k, v in self.head.state_dict().items()}, 0
        log.info("step 0 (the starting head): %s", history[0])
        for step in range(1, config.steps + 1):
            vectors, labels = self.batch()
            output = self.loss(F.normalize(joined(vectors, self.member, self.head, self.scale), dim=-1), labels)
            self.optimizer.zero_grad()
            output.loss.backward()
            self.optimizer.step()
            if step % config.eval_every and step != config.steps:
                continue
            history.append({"step": step, "loss": output.loss.item(), **self.check()})
            log.info("step %d: %s", step, history[-1])
            if history[-1]["tar_at_far_1e-3"] > best["tar_at_far_1e-3"]:
                best, best_state, waited = history[-1], {k: v.clone() for k, v in self.head.state_dict().items()}, 0
            else:
                waited += 1
                if waited >= config.patience:
                    break
        self.head.load_state_dict(best_state)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "history.json").write_text(json.dumps(history, indent=1))
        plot_checks(history, best["step"], self.out / "history.png")
        net = with_head(self.model.net, self.member, self.head)
        training = {"command": self.command, "members": self.model.info.get("members", []),
                    "head": {"member": self.member, "dim": config.dim, "step": best["step"], "choose": best,
                             "start": history[0], "miner": config.miner, "margin": config.margin},
                    "config": {key: getattr(config, key) for key in SPLIT_KEYS},
                    "identities": len(self.identities)}
        save_checkpoint(self.out / "best.pt", net, self.model.preprocess, self.model.species, self.model.threshold,
                        training=training, flip_average=self.model.flip_average)
        return {"model": str(self.out / "best.pt"), "embedding_dim": net.embedding_dim, "step": best["step"],
                "choose": best, "start": history[0], "history": str(self.out / "history.json"),
                "plot": str(self.out / "history.png")}
