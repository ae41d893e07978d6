"""The training loop: P x K batches, online mining, a metric (or joint) loss, validation on
held-out identities every epoch, checkpoints every epoch and exact resume."""
from __future__ import annotations

import json
import logging
import random
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from faces.checkpoint import FaceModel, load_model, save_checkpoint
from faces.errors import ModelError
from faces.precision import compute_precision
from .data import DataError, FaceDataset, PKSampler, scan_identities
from .evaluate import (calibration_pairs, open_set_metrics, operating_points, split_for_training, tar_at_far,
                       verification_metrics)
from faces.imaging import Preprocess
from .losses import ContrastiveLoss, JointLoss, TripletLoss
from .miners import make_miner
from faces.architectures import DEFAULT_INPUT_SIZE
from faces.models import ENSEMBLE, EmbeddingNet

log = logging.getLogger(__name__)

LOSSES = ("triplet", "joint", "contrastive")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULERS = ("cosine", "plateau", "none")
# Without a validation split there is no data to choose a threshold on; this is the
# midpoint of the range a 0.2-margin triplet model typically separates at.
FALLBACK_THRESHOLD = 1.0


@dataclass
class TrainConfig:
    data: str
    out: str
    species: str = "human"
    arch: str = "small"
    pretrained: bool = False
    embedding_dim: int = 128
    input_size: int | None = None
    crop: float = 1.0
    loss: str = "triplet"
    miner: str = "batch-hard"
    margin: float = 0.2
    contrastive_margin: float = 1.0
    softmax_weight: float = 1.0
    softmax_margin: float = 0.0
    warmup_steps: int = 0
    hard_batches: bool = False
    select: str = "accuracy"
    keep_epochs: bool = False
    p: int = 32
    k: int = 4
    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 5e-4
    optimizer: str = "adamw"
    scheduler: str = "cosine"
    choose_fraction: float = 0.2
    test_fraction: float = 0.2
    seed: int = 0
    init: str | None = None
    alignment: str | None = None
    freeze: int = 0
    layer_decay: float = 1.0
    augment: str = "full"
    workers: int = 1
    amp: bool = True
    compile: bool = True
    device: str | None = None
    progress: bool = True

    @property
    def size(self) -> int:
        return self.input_size or DEFAULT_INPUT_SIZE[self.arch]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


AUGMENTATIONS = ("full", "light", "strong")
# What picks best.pt on the choose identities: verification accuracy on the pairs file, or the
# low-FAR tail (TAR at FAR 1e-3 over every stranger pair), which 1:N search at small FPIR needs.
SELECT_METRICS = {"accuracy": "val_accuracy", "tar": "val_tar_at_far_1e-3"}


def augmentation(size: int, kind: str = "full"):
    """'full' for training from scratch; 'light' (flips, colour, 2% shifts) for adapting an
    aligned-face network, whose features depend on where the alignment puts the face."""
    from torchvision.transforms import v2
    if kind == "light":
        return v2.Compose([
            v2.RandomHorizontalFlip(),
            v2.RandomAffine(degrees=3, translate=(0.02, 0.02)),
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02),
        ])
    if kind == "strong":
        # 'light' plus what real galleries add: scale changes, blur, JPEG artefacts, more colour.
        return v2.Compose([
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.RandomResizedCrop(size, scale=(0.85, 1.0), ratio=(0.95, 1.05), antialias=True)], p=0.5),
            v2.RandomAffine(degrees=3, translate=(0.02, 0.02)),
            v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03),
            v2.RandomGrayscale(p=0.05),
            v2.RandomApply([v2.GaussianBlur(5, sigma=(0.3, 1.5))], p=0.2),
            v2.RandomApply([v2.JPEG((30, 90))], p=0.3),
        ])
    if kind != "full":
        raise ValueError(f"unknown augmentation {kind!r}; choose from {', '.join(AUGMENTATIONS)}")
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.8, 1.0), ratio=(0.9, 1.1), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomAffine(degrees=10, translate=(0.04, 0.04)),
        v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03),
    ])


def build_loss(config: TrainConfig, num_classes: int) -> torch.nn.Module:
    if config.loss == "contrastive":
        return ContrastiveLoss(config.contrastive_margin)
    triplet = TripletLoss(make_miner(config.miner, config.margin), config.margin,
                          average_over_active=config.miner == "batch-all")
    if config.loss == "joint":
        return JointLoss(triplet, config.embedding_dim, num_classes, config.softmax_weight,
                         config.softmax_margin)
    if config.loss == "triplet":
        return triplet
    raise ValueError(f"unknown loss {config.loss!r}; choose from {', '.join(LOSSES)}")


def build_optimizer(config: TrainConfig, parameters) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.lr, momentum=0.9,
                               weight_decay=config.weight_decay, nesterov=True)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")


def build_scheduler(config: TrainConfig, optimizer):
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    if config.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.3, patience=3)
    if config.scheduler == "none":
        return None
    raise ValueError(f"unknown scheduler {config.scheduler!r}; choose from {', '.join(SCHEDULERS)}")


def backbone_layers(net: EmbeddingNet) -> list[torch.nn.Module]:
    """The backbone's layers that hold parameters, in the order it builds them (input first)."""
    return [m for m in net.backbone.modules() if next(m.parameters(recurse=False), None) is not None]


def freeze_early_layers(net: EmbeddingNet, count: int) -> None:
    """Stop training the first `count` backbone layers that hold parameters (in the order
    the backbone builds them, input first): early features of a face network are generic.
    Batch-norm layers among them still update their running statistics."""
    layers = backbone_layers(net)
    if count > len(layers):
        raise ValueError(f"--freeze {count}: the {net.arch} backbone has {len(layers)} layers with parameters")
    for layer in layers[:count]:
        layer.requires_grad_(False)


def parameter_groups(net: EmbeddingNet, loss: torch.nn.Module, lr: float, decay: float) -> list[dict]:
    """The trainable parameters as optimizer groups. With `decay` below 1 (discriminative
    learning rates) each backbone layer learns at lr x decay^(layers between it and the
    output), so what is nearest the input, most generic, moves least; the head and the
    loss's own parameters take lr. The first group is always at lr (the one logged)."""
    if not 0 < decay <= 1:
        raise ValueError(f"--layer-decay {decay}: must be in (0, 1]")
    layers = backbone_layers(net) if decay < 1 else []
    in_layers = {id(p) for layer in layers for p in layer.parameters(recurse=False)}
    groups = [{"params": [p for p in net.parameters() if p.requires_grad and id(p) not in in_layers]
               + list(loss.parameters()), "lr": lr}]
    for depth, layer in enumerate(reversed(layers)):
        trainable = [p for p in layer.parameters(recurse=False) if p.requires_grad]
        if trainable:
            groups.append({"params": trainable, "lr": lr * decay ** depth})
    return groups


def plot_history(history: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = [h["epoch"] for h in history]
    figure, left = plt.subplots(figsize=(6, 4))
    left.plot(epochs, [h["loss"] for h in history], color="tab:blue", label="training loss")
    left.set(xlabel="epoch", ylabel="loss")
    if any(h.get("val_accuracy") is not None for h in history):
        right = left.twinx()
        right.plot(epochs, [h.get("val_accuracy") for h in history], color="tab:orange",
                   label="validation accuracy")
        right.set(ylabel="verification accuracy (held-out identities)")
        right.legend(loc="lower right")
    left.legend(loc="upper right")
    left.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


class Trainer:
    def __init__(self, config: TrainConfig, command: str | None = None):
        self.config = config
        self.command = command or shlex.join(["trainer"] + sys.argv[1:])
        self.out = Path(config.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.cuda = self.device.type == "cuda"
        seed_everything(config.seed)
        start = load_model(config.init, "cpu") if config.init else None
        if start is not None and start.net.arch == ENSEMBLE:
            raise ModelError(f"{config.init}: an ensemble is not trained further; start from one of its members")
        if start is not None:
            # The starting network fixes architecture and normalisation; a new alignment (e.g. a
            # human network adapted to already-cropped dog faces) brings its crop, and a new input
            # size is the same fully convolutional network seeing more pixels.
            config.arch, config.embedding_dim = start.net.arch, start.embedding_dim
            config.input_size = config.input_size or start.preprocess.input_size
            self.preprocess = replace(start.preprocess, input_size=config.input_size)
            if config.alignment:
                self.preprocess = replace(self.preprocess, alignment=config.alignment, crop=config.crop)
            config.crop, config.alignment = self.preprocess.crop, self.preprocess.alignment
        else:
            self.preprocess = Preprocess(input_size=config.size, crop=config.crop,
                                         alignment=config.alignment or "lfw")

        train_root, self.validation = Path(config.data), None
        if config.choose_fraction > 0:
            train_root, self.validation = split_for_training(config.data, self.out, config.choose_fraction,
                                                             config.test_fraction, config.seed, self.preprocess,
                                                             config.progress)
        self.dataset = FaceDataset(scan_identities(train_root), self.preprocess,
                                   augmentation(config.size, config.augment), config.progress)
        if len(self.dataset.identities) < 2:
            raise DataError(f"{train_root}: training needs at least two identities with readable "
                            f"images, found {len(self.dataset.identities)}")
        self.sampler = PKSampler(self.dataset.labels, config.p, config.k, config.seed)
        self.loader = DataLoader(self.dataset, batch_sampler=self.sampler, num_workers=config.workers,
                                 persistent_workers=config.workers > 0, pin_memory=self.cuda)

        self.net = (start.net if start is not None
                    else EmbeddingNet(config.arch, config.embedding_dim, config.pretrained)).to(self.device)
        freeze_early_layers(self.net, config.freeze)
        self.loss = build_loss(config, len(self.dataset.identities)).to(self.device)
        self.optimizer = build_optimizer(config, parameter_groups(self.net, self.loss, config.lr, config.layer_decay))
        self.scheduler = build_scheduler(config, self.optimizer)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.cuda and config.amp)
        # Mixed precision: float16 on CUDA (scaled gradients); bfloat16 on a CPU that embeds
        # in it (faces.precision: AMX), which needs no scaling.
        self.autocast = ({"device_type": "cuda", "enabled": config.amp} if self.cuda else
                         {"device_type": "cpu", "dtype": torch.bfloat16,
                          "enabled": config.amp and compute_precision(self.device) == "bfloat16"})
        self.forward = torch.compile(self.net) if self.cuda and config.compile else self.net
        self.epoch, self.best_accuracy, self.history = 0, -1.0, []
        self.operating_points = None   # chosen on the validation identities by each validate()

    # --- state ---------------------------------------------------------------------------

    def state(self) -> dict:
        return {"config": asdict(self.config), "epoch": self.epoch, "best_accuracy": self.best_accuracy,
                "history": self.history, "net": self.net.state_dict(), "loss": self.loss.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler else None,
                "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                        "torch": torch.get_rng_state()}}

    def resume(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.net.load_state_dict(state["net"])
        self.loss.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if self.scheduler and state["scheduler"]:
            self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.best_accuracy, self.history = state["epoch"], state["best_accuracy"], state["history"]
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        torch.set_rng_state(state["rng"]["torch"])
        log.info("resumed from %s at epoch %d", path, self.epoch)

    def save(self, metrics: dict) -> None:
        threshold = metrics.get("val_threshold") or FALLBACK_THRESHOLD
        training = {"command": self.command, "config": asdict(self.config), "epoch": self.epoch,
                    "metrics": metrics, "identities": len(self.dataset.identities),
                    "images": len(self.dataset)}
        points = self.operating_points
        save_checkpoint(self.out / "model.pt", self.net, self.preprocess, self.config.species,
                        threshold, training, operating_points=points)
        chosen_by = metrics.get(SELECT_METRICS[self.config.select])
        if self.validation is None or chosen_by >= self.best_accuracy:
            self.best_accuracy = chosen_by or 0.0
            save_checkpoint(self.out / "best.pt", self.net, self.preprocess, self.config.species,
                            threshold, training, operating_points=points)
        if self.config.keep_epochs:
            save_checkpoint(self.out / f"epoch-{self.epoch}.pt", self.net, self.preprocess, self.config.species,
                            threshold, training, operating_points=points)
        temporary = self.out / "last.pt.tmp"
        torch.save(self.state(), temporary)
        temporary.replace(self.out / "last.pt")

    # --- loop -----------------------------------------------------------------------------

    def validate(self) -> dict:
        if self.validation is None:
            return {"val_accuracy": None}
        self.net.eval()
        model = FaceModel(self.net, self.preprocess, self.config.species, FALLBACK_THRESHOLD)
        inputs = self.validation.embed(model)
        metrics = verification_metrics(inputs.pair_distances, inputs.pair_same)
        distances, same = calibration_pairs(inputs)
        open_set = open_set_metrics(inputs.embeddings, inputs.labels, fpirs=(0.05, 0.01))
        self.operating_points = {**operating_points(distances, same),
                                 "data": str(self.out / "split" / "choose"),
                                 "pairs_file": str(self.out / "split" / "choose_pairs.txt")}
        return {"val_accuracy": metrics["accuracy"], "val_accuracy_std": metrics["accuracy_std"],
                "val_auc": metrics["auc"], "val_threshold": metrics["threshold"],
                "val_tar_at_far_1e-3": tar_at_far(distances, same, 1e-3),
                "val_tar_at_far_1e-4": tar_at_far(distances, same, 1e-4),
                "val_fnir_at_fpir_0.05": open_set["fnir_at_fpir_0.05"],
                "val_fnir_at_fpir_0.01": open_set["fnir_at_fpir_0.01"]}

    @torch.no_grad()
    def training_centroids(self) -> torch.Tensor:
        """Each training identity's mean embedding (unit length) by the current network, on
        the un-augmented training crops."""
        self.net.eval()
        model = FaceModel(self.net, self.preprocess, self.config.species, FALLBACK_THRESHOLD)
        embeddings = torch.from_numpy(model.embed_crops(self.dataset.images))
        sums = torch.zeros(len(self.dataset.identities), embeddings.shape[1]).index_add_(0, self.dataset.labels, embeddings)
        return torch.nn.functional.normalize(sums, dim=1)

    def mine_identity_neighbours(self) -> None:
        """Hard negatives across the whole training set, between epochs: every identity's
        nearest identities (by centroid) are put in its P x K batch (PKSampler.set_neighbours)."""
        centroids = self.training_centroids()
        similarity = centroids @ centroids.T
        similarity.fill_diagonal_(-2.0)
        top = similarity.topk(min(4 * self.config.p, len(centroids) - 1), dim=1).indices
        self.sampler.set_neighbours(top.tolist())

    def train_epoch(self, steps_log) -> dict:
        self.net.train()
        self.sampler.set_epoch(self.epoch)
        scheduled = [group["lr"] for group in self.optimizer.param_groups]
        steps_per_epoch = len(self.sampler)
        totals: dict[str, float] = {}
        batches = 0
        bar = tqdm(self.loader, desc=f"epoch {self.epoch + 1}/{self.config.epochs}", unit="batch",
                   disable=not self.config.progress, leave=False)
        for images, labels in bar:
            step = self.epoch * steps_per_epoch + batches
            if step < self.config.warmup_steps:   # linear warm-up on top of the schedule
                for group, lr in zip(self.optimizer.param_groups, scheduled):
                    group["lr"] = lr * (step + 1) / self.config.warmup_steps
            elif step == self.config.warmup_steps:
                for group, lr in zip(self.optimizer.param_groups, scheduled):
                    group["lr"] = lr
            images = self.preprocess.normalise(images.to(self.device, non_blocking=True))
            labels = labels.to(self.device, non_blocking=True)
            with torch.autocast(**self.autocast):
                embeddings = self.forward(images)
            output = self.loss(embeddings.float(), labels)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(output.loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            stats = {"loss": output.loss.item(), **output.stats}
            steps_log.write(json.dumps({"epoch": self.epoch + 1, "step": batches, **stats}) + "\n")
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + float(value)
            batches += 1
            bar.set_postfix(loss=f"{stats['loss']:.3f}", active=f"{stats.get('active', 0):.2f}")
        for group, lr in zip(self.optimizer.param_groups, scheduled):   # the schedule steps from here
            group["lr"] = lr
        return {key: value / max(batches, 1) for key, value in totals.items()}

    def fit(self) -> dict:
        config = self.config
        with open(self.out / "steps.jsonl", "a") as steps_log:
            if config.loss == "joint" and config.init and self.epoch == 0:
                self.loss.head.init_from_centroids(self.training_centroids())
            while self.epoch < config.epochs:
                started = time.time()
                if config.hard_batches:
                    self.mine_identity_neighbours()
                train_stats = self.train_epoch(steps_log)
                metrics = {"epoch": self.epoch + 1, **train_stats, **self.validate(),
                           "lr": self.optimizer.param_groups[0]["lr"],
                           "seconds": round(time.time() - started, 1),
                           "images_per_second": round(len(self.dataset) / max(time.time() - started, 1e-9), 1)}
                if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    self.scheduler.step(metrics["val_accuracy"] if metrics["val_accuracy"] is not None
                                        else -metrics["loss"])
                elif self.scheduler:
                    self.scheduler.step()
                self.epoch += 1
                self.history.append(metrics)
                with open(self.out / "epochs.jsonl", "a") as epochs_log:
                    epochs_log.write(json.dumps(metrics) + "\n")
                self.save(metrics)
                plot_history(self.history, self.out / "training.png")
                # 4 significant digits: 4 decimals showed a learning rate of 3e-5 as 0.0
                log.info("epoch %d: %s", self.epoch, {k: float(f"{v:.4g}") if isinstance(v, float) else v
                                                     for k, v in metrics.items()})
        return self.history[-1] if self.history else {}
