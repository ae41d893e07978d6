"""Online triplet mining over a P x K batch, vectorised on the batch's distance matrix.

Each miner takes unit-length embeddings (N x D) and integer labels (N) and returns three
index tensors (anchors, positives, negatives). Mining looks at distances only, so it runs
without gradients; the loss recomputes the distances of the chosen triplets.

Distances are Euclidean (not squared) between embeddings, in [0, 2] for unit vectors.
Identities with a single image in the batch have no positive: they serve only as negatives.
"""
from __future__ import annotations

import torch

Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def pairwise_distances(embeddings: torch.Tensor) -> torch.Tensor:
    squared = embeddings.pow(2).sum(1)
    gram = embeddings @ embeddings.T
    squared_distances = (squared[:, None] + squared[None, :] - 2 * gram).clamp_min(0)
    # The diagonal is 0 by definition; rounding would otherwise leave sqrt(1e-8)-sized values.
    return squared_distances.fill_diagonal_(0).sqrt()


def label_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive_mask, negative_mask): same label but not itself, and different label."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def _empty(device) -> Triplets:
    empty = torch.empty(0, dtype=torch.long, device=device)
    return empty, empty, empty


class BatchHardMiner:
    """Hermans et al. 2017: for each anchor, its farthest positive and its closest negative."""

    name = "batch-hard"

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets:
        with torch.no_grad():
            distances = pairwise_distances(embeddings)
            positive, negative = label_masks(labels)
            usable = positive.any(1) & negative.any(1)
            if not usable.any():
                return _empty(embeddings.device)
            hardest_positive = distances.masked_fill(~positive, -1.0).argmax(1)
            hardest_negative = distances.masked_fill(~negative, float("inf")).argmin(1)
            anchors = usable.nonzero().squeeze(1)
            return anchors, hardest_positive[anchors], hardest_negative[anchors]


class SemiHardMiner:
    """FaceNet (Schroff et al. 2015): every anchor-positive pair with a semi-hard negative,
    one farther from the anchor than the positive but inside the margin
    (d_ap < d_an < d_ap + margin); of those, the closest one.

    Fallback, for a pair with no semi-hard negative: if some negatives are closer than the
    positive (hard), the farthest of them, the least hard one, as TensorFlow's
    triplet_semihard_loss does, so training does not collapse on the very hardest
    negatives early on. If every negative is beyond the margin the pair is already
    satisfied and yields no triplet.
    """

    name = "semi-hard"

    def __init__(self, margin: float = 0.2):
        self.margin = margin

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets:
        with torch.no_grad():
            distances = pairwise_distances(embeddings)
            positive, negative = label_masks(labels)
            anchors, positives = positive.nonzero(as_tuple=True)
            if len(anchors) == 0:
                return _empty(embeddings.device)
            d_ap = distances[anchors, positives][:, None]          # M x 1
            d_an = distances[anchors]                               # M x N
            is_negative = negative[anchors]
            semi_hard = is_negative & (d_an > d_ap) & (d_an < d_ap + self.margin)
            hard = is_negative & (d_an <= d_ap)
            closest_semi_hard = d_an.masked_fill(~semi_hard, float("inf")).argmin(1)
            least_hard = d_an.masked_fill(~hard, -1.0).argmax(1)
            has_semi_hard = semi_hard.any(1)
            chosen = torch.where(has_semi_hard, closest_semi_hard, least_hard)
            keep = has_semi_hard | hard.any(1)
            return anchors[keep], positives[keep], chosen[keep]


class BatchAllMiner:
    """Every valid triplet in the batch (the loss then averages over the non-zero ones)."""

    name = "batch-all"

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets:
        with torch.no_grad():
            positive, negative = label_masks(labels)
            valid = positive[:, :, None] & negative[:, None, :]    # anchor, positive, negative
            anchors, positives, negatives = valid.nonzero(as_tuple=True)
            return anchors, positives, negatives


MINERS = {"batch-hard": BatchHardMiner, "semi-hard": SemiHardMiner, "batch-all": BatchAllMiner}


def make_miner(name: str, margin: float = 0.2):
    if name not in MINERS:
        raise ValueError(f"unknown miner {name!r}; choose from {', '.join(MINERS)}")
    return SemiHardMiner(margin) if name == "semi-hard" else MINERS[name]()
