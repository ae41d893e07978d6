"""Losses on unit-length embeddings. Each returns a LossOutput: the scalar to minimise and
the statistics worth logging per step (active fraction, mean positive/negative distance)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .miners import label_masks, pairwise_distances


@dataclass
class LossOutput:
    loss: torch.Tensor
    stats: dict[str, float] = field(default_factory=dict)


def _zero(embeddings: torch.Tensor) -> torch.Tensor:
    # Keeps the graph connected so backward() works on a batch with nothing to learn from.
    return embeddings.sum() * 0.0


class TripletLoss(nn.Module):
    """max(0, d(a,p) - d(a,n) + margin) over the miner's triplets.

    average_over_active: divide by the number of non-zero triplets instead of all of them,
    which batch-all needs (most of its triplets are easy and would dilute the gradient).
    """

    def __init__(self, miner, margin: float = 0.2, average_over_active: bool = False):
        super().__init__()
        self.miner, self.margin, self.average_over_active = miner, margin, average_over_active

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        anchors, positives, negatives = self.miner(embeddings, labels)
        if len(anchors) == 0:
            return LossOutput(_zero(embeddings), {"triplets": 0, "active": 0.0})
        d_ap = (embeddings[anchors] - embeddings[positives]).norm(dim=1)
        d_an = (embeddings[anchors] - embeddings[negatives]).norm(dim=1)
        losses = F.relu(d_ap - d_an + self.margin)
        active = losses > 0
        if self.average_over_active:
            loss = losses[active].mean() if active.any() else _zero(embeddings)
        else:
            loss = losses.mean()
        return LossOutput(loss, {"triplets": len(anchors), "active": active.float().mean().item(),
                                 "d_pos": d_ap.mean().item(), "d_neg": d_an.mean().item()})


class ContrastiveLoss(nn.Module):
    """Hadsell et al. 2006 over every pair in the batch: d^2 for same-identity pairs,
    max(0, margin - d)^2 for different ones, each kind averaged separately."""

    def __init__(self, margin: float = 1.0):
        super().__init__()
        self.margin = margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        distances = pairwise_distances(embeddings)
        positive, negative = label_masks(labels)
        if not positive.any() or not negative.any():
            return LossOutput(_zero(embeddings), {"active": 0.0})
        d_pos, d_neg = distances[positive], distances[negative]
        negative_losses = F.relu(self.margin - d_neg)
        loss = d_pos.pow(2).mean() + negative_losses.pow(2).mean()
        active = torch.cat([d_pos > 0, negative_losses > 0]).float().mean().item()
        return LossOutput(loss, {"active": active, "d_pos": d_pos.mean().item(),
                                 "d_neg": d_neg.mean().item()})


class CosineSoftmaxHead(nn.Module):
    """Softmax classifier over training identities on cosine logits (NormFace): embeddings
    are unit-length, so a plain linear layer would produce logits too small to train."""

    def __init__(self, embedding_dim: int, num_classes: int, scale: float = 16.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, embedding_dim) * 0.01)
        self.scale = scale

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.scale * embeddings @ F.normalize(self.weight, dim=1).T

    @torch.no_grad()
    def init_from_centroids(self, centroids: torch.Tensor) -> None:
        """Start each identity's weight at the mean of its training embeddings, so the head's
        first gradients agree with the network it is attached to instead of pulling it
        towards random directions (the dog card's joint run, with a randomly started head,
        collapsed within two epochs)."""
        self.weight.copy_(F.normalize(centroids.to(self.weight), dim=1))


class JointLoss(nn.Module):
    """Cross-entropy over a softmax head plus a metric loss (cross-entropy + triplet).

    With `softmax_margin` m > 0 the head is an additive-margin (CosFace) softmax: the true
    identity's logit is scale * (cos - m), so an embedding must beat every other identity's
    direction by m in cosine, not just win."""

    def __init__(self, metric_loss: nn.Module, embedding_dim: int, num_classes: int,
                 softmax_weight: float = 1.0, softmax_margin: float = 0.0, scale: float = 16.0):
        super().__init__()
        self.metric_loss = metric_loss
        self.head = CosineSoftmaxHead(embedding_dim, num_classes, scale)
        self.softmax_weight, self.softmax_margin = softmax_weight, softmax_margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        metric = self.metric_loss(embeddings, labels)
        logits = self.head(embeddings)
        margin = self.head.scale * self.softmax_margin * F.one_hot(labels, logits.shape[1]).to(logits)
        cross_entropy = F.cross_entropy(logits - margin, labels)
        accuracy = (logits.argmax(1) == labels).float().mean().item()
        stats = dict(metric.stats, cross_entropy=cross_entropy.item(), train_accuracy=accuracy)
        return LossOutput(metric.loss + self.softmax_weight * cross_entropy, stats)
