"""Miners and losses against brute force (every triplet enumerated) and against
pytorch-metric-learning's miners as an oracle."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from trainer.losses import ContrastiveLoss, JointLoss, TripletLoss
from trainer.miners import BatchAllMiner, BatchHardMiner, SemiHardMiner, pairwise_distances

MARGIN = 0.2


def random_batch(seed: int, n: int = 14, dim: int = 8):
    generator = torch.Generator().manual_seed(seed)
    embeddings = F.normalize(torch.randn(n, dim, generator=generator), dim=1)
    # Three identities of four, one of one (negatives only), and the rest split in pairs.
    labels = torch.tensor([0] * 4 + [1] * 4 + [2] * 4 + [3] + [4] * (n - 13))
    return embeddings, labels


def as_set(triplets):
    return set(zip(*(t.tolist() for t in triplets)))


def all_triplets(labels):
    n = len(labels)
    return [(a, p, q) for a, p, q in itertools.product(range(n), repeat=3)
            if a != p and labels[a] == labels[p] and labels[q] != labels[a]]


@pytest.mark.parametrize("seed", range(5))
def test_batch_hard_matches_brute_force(seed):
    embeddings, labels = random_batch(seed)
    d = torch.cdist(embeddings, embeddings)
    expected = set()
    for a in range(len(labels)):
        positives = [p for p in range(len(labels)) if p != a and labels[p] == labels[a]]
        negatives = [q for q in range(len(labels)) if labels[q] != labels[a]]
        if positives and negatives:
            expected.add((a, max(positives, key=lambda p: d[a, p]), min(negatives, key=lambda q: d[a, q])))
    assert as_set(BatchHardMiner()(embeddings, labels)) == expected
    assert 12 not in {a for a, _, _ in expected}   # the single-image identity is never an anchor


@pytest.mark.parametrize("seed", range(5))
def test_semi_hard_matches_brute_force(seed):
    embeddings, labels = random_batch(seed)
    d = torch.cdist(embeddings, embeddings)
    expected = set()
    for a, p in itertools.permutations(range(len(labels)), 2):
        if labels[a] != labels[p]:
            continue
        negatives = [q for q in range(len(labels)) if labels[q] != labels[a]]
        band = [q for q in negatives if d[a, p] < d[a, q] < d[a, p] + MARGIN]
        hard = [q for q in negatives if d[a, q] <= d[a, p]]
        if band:
            expected.add((a, p, min(band, key=lambda q: d[a, q])))
        elif hard:
            expected.add((a, p, max(hard, key=lambda q: d[a, q])))
    assert as_set(SemiHardMiner(MARGIN)(embeddings, labels)) == expected


@pytest.mark.parametrize("seed", range(3))
def test_batch_all_enumerates_every_valid_triplet(seed):
    embeddings, labels = random_batch(seed)
    assert as_set(BatchAllMiner()(embeddings, labels)) == set(all_triplets(labels.tolist()))


def test_pairwise_distances_match_cdist():
    embeddings, _ = random_batch(0)
    assert torch.allclose(pairwise_distances(embeddings), torch.cdist(embeddings, embeddings), atol=1e-5)


# --- pytorch-metric-learning as an oracle ---------------------------------------------------

pml = pytest.importorskip("pytorch_metric_learning.miners")


@pytest.mark.parametrize("seed", range(5))
def test_batch_hard_agrees_with_pytorch_metric_learning(seed):
    embeddings, labels = random_batch(seed)
    assert as_set(BatchHardMiner()(embeddings, labels)) == as_set(pml.BatchHardMiner()(embeddings, labels))


@pytest.mark.parametrize("seed", range(5))
def test_semi_hard_choices_are_pml_semi_hard_triplets(seed):
    """Where a pair has semi-hard negatives, pml lists them all; we pick the closest of them."""
    embeddings, labels = random_batch(seed, n=20)
    d = torch.cdist(embeddings, embeddings)
    oracle = as_set(pml.TripletMarginMiner(margin=MARGIN, type_of_triplets="semihard")(embeddings, labels))
    ours = as_set(SemiHardMiner(MARGIN)(embeddings, labels))
    by_pair = {}
    for a, p, q in oracle:
        by_pair.setdefault((a, p), []).append(q)
    assert by_pair, "random batch should contain semi-hard triplets"
    chosen = {(a, p): q for a, p, q in ours}
    for pair, negatives in by_pair.items():
        assert chosen[pair] == min(negatives, key=lambda q: d[pair[0], q])


@pytest.mark.parametrize("seed", range(5))
def test_batch_all_active_triplets_agree_with_pml(seed):
    embeddings, labels = random_batch(seed)
    a, p, q = BatchAllMiner()(embeddings, labels)
    d = torch.cdist(embeddings, embeddings)
    active = (d[a, p] - d[a, q] + MARGIN) > 0
    ours = as_set((a[active], p[active], q[active]))
    oracle = as_set(pml.TripletMarginMiner(margin=MARGIN, type_of_triplets="all")(embeddings, labels))
    assert ours == oracle


# --- losses -------------------------------------------------------------------------------

def test_triplet_loss_value_and_statistics_match_brute_force():
    embeddings, labels = random_batch(1)
    d = torch.cdist(embeddings, embeddings)
    output = TripletLoss(BatchAllMiner(), MARGIN, average_over_active=True)(embeddings, labels)
    losses = torch.tensor([max(0.0, float(d[a, p] - d[a, q]) + MARGIN) for a, p, q in all_triplets(labels.tolist())])
    assert output.loss.item() == pytest.approx(losses[losses > 0].mean().item(), rel=1e-4)
    assert output.stats["active"] == pytest.approx((losses > 0).float().mean().item())
    plain = TripletLoss(BatchAllMiner(), MARGIN)(embeddings, labels)
    assert plain.loss.item() == pytest.approx(losses.mean().item(), rel=1e-4)


def test_triplet_loss_is_zero_when_identities_are_separated():
    # Each identity sits on its own axis: d_ap = 0 and d_an = sqrt(2) > margin.
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    embeddings = F.one_hot(labels, 8).float().requires_grad_()
    output = TripletLoss(BatchHardMiner(), MARGIN)(embeddings, labels)
    assert output.loss.item() == 0.0 and output.stats["active"] == 0.0
    output.loss.backward()   # a batch with nothing to learn must still backpropagate


def test_contrastive_loss_matches_brute_force():
    embeddings, labels = random_batch(2)
    d = torch.cdist(embeddings, embeddings)
    n = len(labels)
    same = [float(d[i, j]) ** 2 for i in range(n) for j in range(n) if i != j and labels[i] == labels[j]]
    different = [max(0.0, 1.0 - float(d[i, j])) ** 2 for i in range(n) for j in range(n) if labels[i] != labels[j]]
    expected = sum(same) / len(same) + sum(different) / len(different)
    assert ContrastiveLoss(1.0)(embeddings, labels).loss.item() == pytest.approx(expected, rel=1e-4)


def test_joint_loss_adds_cross_entropy_and_trains_its_head():
    embeddings, labels = random_batch(3)
    triplet = TripletLoss(BatchHardMiner(), MARGIN)
    joint = JointLoss(triplet, embeddings.shape[1], num_classes=int(labels.max()) + 1)
    output = joint(embeddings, labels)
    assert output.loss.item() == pytest.approx(triplet(embeddings, labels).loss.item()
                                               + output.stats["cross_entropy"], rel=1e-4)
    output.loss.backward()
    assert joint.head.weight.grad is not None and joint.head.weight.grad.abs().sum() > 0
