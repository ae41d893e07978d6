"""Identity folders, identity splits, LFW-format pairs, the cached face dataset and the
P x K batch sampler."""
from __future__ import annotations

import logging
import os
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset, Sampler
from tqdm import tqdm

from faces.errors import DataError, ImageError
from faces.detectors import get_detector
from faces.imaging import Preprocess, list_images, load_image, resolve_data_root  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    path: Path
    identity: str


def scan_identities(root: str | os.PathLike) -> list[Sample]:
    """Every image in `root/<identity>/`, the identity being the folder name, sorted."""
    root = resolve_data_root(root)
    samples = [Sample(path, folder.name)
               for folder in sorted(p for p in root.iterdir() if p.is_dir())
               for path in list_images(folder)]
    if not samples:
        raise DataError(f"{root}: no images found in identity sub-folders "
                        "(expected ROOT/<identity>/<image>.jpg)")
    return samples


def group_by_identity(samples: list[Sample]) -> dict[str, list[Sample]]:
    groups: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        groups[sample.identity].append(sample)
    return dict(groups)


# The three roles an identity can have, in the order they are cut from a seeded shuffle.
SPLIT_PARTS = ("train", "choose", "test")


@dataclass(frozen=True)
class IdentitySplit:
    """Disjoint identity lists: `train` is trained on; `choose` decides everything a run
    chooses (early stopping, miner, margin, epochs, operating points, any rule's parameters);
    `test` is touched only to report a model about to ship."""

    train: list[str]
    choose: list[str]
    test: list[str]


def split_identities(identities: list[str], choose_fraction: float = 0.2, test_fraction: float = 0.2,
                     seed: int = 0) -> IdentitySplit:
    """The same identities and seed always give the same split. `choose` is the first
    `choose_fraction` of the seeded shuffle, so it is exactly what earlier two-way splits
    held out as "val" with that fraction and seed; `test` is the next `test_fraction`."""
    if choose_fraction < 0 or test_fraction < 0 or choose_fraction + test_fraction >= 1:
        raise DataError(f"choose ({choose_fraction}) and test ({test_fraction}) fractions must be "
                        f"at least 0 and leave identities to train on")
    shuffled = sorted(identities)
    random.Random(seed).shuffle(shuffled)
    n_choose = round(len(shuffled) * choose_fraction)
    n_test = round(len(shuffled) * test_fraction)
    return IdentitySplit(train=sorted(shuffled[n_choose + n_test:]), choose=sorted(shuffled[:n_choose]),
                         test=sorted(shuffled[n_choose:n_choose + n_test]))


# --- pairs in the LFW format -----------------------------------------------------------

@dataclass(frozen=True)
class Pair:
    first: Path
    second: Path
    same: bool


def _pair_file(root: Path, identity: str, field: str) -> Path:
    name = f"{identity}_{int(field):04d}.jpg" if field.isdigit() else field
    return root / identity / name


def read_pairs(pairs_file: str | os.PathLike, root: str | os.PathLike) -> list[Pair]:
    """Parse an LFW pairs file: an optional header of counts, then `name a b` (same) or
    `name1 a name2 b` (different). An integer field i means name/name_%04d.jpg."""
    root = resolve_data_root(root)
    pairs = []
    try:
        lines = Path(pairs_file).read_text().splitlines()
    except OSError as error:
        raise DataError(f"{pairs_file}: cannot read ({error.strerror or error})") from None
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields or (number == 1 and len(fields) <= 2 and all(f.isdigit() for f in fields)):
            continue
        if len(fields) == 3:
            pairs.append(Pair(_pair_file(root, fields[0], fields[1]),
                              _pair_file(root, fields[0], fields[2]), True))
        elif len(fields) == 4:
            pairs.append(Pair(_pair_file(root, fields[0], fields[1]),
                              _pair_file(root, fields[2], fields[3]), False))
        else:
            raise DataError(f"{pairs_file}:{number}: expected 'name a b' or 'name1 a name2 b', "
                            f"got {line.strip()!r}")
    if not pairs:
        raise DataError(f"{pairs_file}: no pairs found")
    return pairs


def make_pairs(samples: list[Sample], count: int, seed: int) -> list[tuple[str, ...]]:
    """Up to `count` same and `count` different pairs as LFW pair-file fields (file names)."""
    rng = random.Random(seed)
    groups = group_by_identity(samples)
    identities = sorted(groups)
    multi = [name for name in identities if len(groups[name]) >= 2]
    if not multi or len(identities) < 2:
        raise DataError("need at least one identity with two images and two identities to make pairs")
    all_same = [(name, a.path.name, b.path.name) for name in multi
                for i, a in enumerate(groups[name]) for b in groups[name][i + 1:]]
    same = rng.sample(all_same, min(count, len(all_same)))
    different: set[tuple[str, ...]] = set()
    attempts = 0
    while len(different) < len(same) and attempts < 100 * count:
        attempts += 1
        first, second = rng.sample(identities, 2)
        different.add((first, rng.choice(groups[first]).path.name,
                       second, rng.choice(groups[second]).path.name))
    return same + sorted(different)


def write_pairs(pairs: list[tuple[str, ...]], path: str | os.PathLike) -> None:
    lines = [str(sum(len(p) == 3 for p in pairs))] + ["\t".join(p) for p in pairs]
    Path(path).write_text("\n".join(lines) + "\n")


def write_split(root: str | os.PathLike, out: str | os.PathLike, choose_fraction: float = 0.2,
                test_fraction: float = 0.2, seed: int = 0, pairs_per_kind: int = 1500) -> dict:
    """Split ROOT's identities into OUT/train, OUT/choose and OUT/test (folders of links to
    the original identity folders, nothing copied) and write OUT/choose_pairs.txt and
    OUT/test_pairs.txt among the choose and the test identities."""
    groups = group_by_identity(scan_identities(root))
    split = split_identities(list(groups), choose_fraction, test_fraction, seed)
    if not split.choose:
        raise DataError(f"{root}: too few identities ({len(groups)}) to hold out {choose_fraction:.0%} to choose on")
    out = Path(out)
    counts = {}
    for part in SPLIT_PARTS:
        names = getattr(split, part)
        folder = out / part
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            link = folder / name
            if not link.exists():
                link.symlink_to(groups[name][0].path.parent.resolve(), target_is_directory=True)
        samples = [s for name in names for s in groups[name]]
        if part != "train" and names:
            write_pairs(make_pairs(samples, pairs_per_kind, seed), out / f"{part}_pairs.txt")
        counts.update({f"{part}_identities": len(names), f"{part}_images": len(samples)})
    return counts


# --- datasets ---------------------------------------------------------------------------

# Where decoded and aligned crops are kept between runs, when set: finding dlib's landmarks in
# 7,500 LFW photos takes minutes on a busy 2-core machine, and every run and evaluation redid it.
CROP_CACHE_ENV = "FACESEARCH_CROP_CACHE"


def _cache_file(cache: Path, path: Path, preprocess: Preprocess) -> Path:
    import hashlib
    stat = Path(path).stat()
    key = repr((str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, preprocess.to_dict()))
    digest = hashlib.sha256(key.encode()).hexdigest()
    return cache / digest[:2] / f"{digest}.pt"


def load_faces(paths: list[Path], preprocess: Preprocess, progress: bool = True,
               desc: str = "loading") -> tuple[torch.Tensor, list[int], list[ImageError]]:
    """Decode and crop every file once: (uint8 N x 3 x S x S, indices kept, errors). With
    $FACESEARCH_CROP_CACHE set, each crop is kept there (keyed by the file's path, size and
    modification time and the preprocessing) and read back by later runs."""
    tensors, kept, errors = [], [], []
    face_of = get_detector("none", preprocess)   # the image is the face, aligned as the model wants
    cache = Path(os.environ[CROP_CACHE_ENV]) if os.environ.get(CROP_CACHE_ENV) else None
    for index, path in enumerate(tqdm(paths, desc=desc, unit="img", disable=not progress)):
        try:
            stored = _cache_file(cache, path, preprocess) if cache is not None else None
            if stored is not None and stored.is_file():
                tensors.append(torch.load(stored))
                kept.append(index)
                continue
            tensors.append(preprocess.to_uint8(face_of(load_image(path))[0].image))
            if stored is not None:
                stored.parent.mkdir(parents=True, exist_ok=True)
                # A name of this process's own: two runs may cache the same crop at once.
                temporary = stored.with_suffix(f".{os.getpid()}.tmp")
                torch.save(tensors[-1].clone(), temporary)
                temporary.replace(stored)
            kept.append(index)
        except ImageError as error:
            errors.append(error)
    for error in errors:
        log.warning("skipped %s", error)
    stacked = torch.stack(tensors) if tensors else torch.empty(0, 3, preprocess.input_size,
                                                               preprocess.input_size, dtype=torch.uint8)
    return stacked, kept, errors


class FaceDataset(Dataset):
    """Labelled faces held in memory as uint8 crops (decoded once; epochs only augment)."""

    def __init__(self, samples: list[Sample], preprocess: Preprocess, transform=None,
                 progress: bool = True):
        images, kept, self.errors = load_faces([s.path for s in samples], preprocess, progress)
        self.samples = [samples[i] for i in kept]
        self.identities = sorted({s.identity for s in self.samples})
        index = {name: i for i, name in enumerate(self.identities)}
        self.labels = torch.tensor([index[s.identity] for s in self.samples], dtype=torch.long)
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        image = self.images[i]
        return (self.transform(image) if self.transform else image), self.labels[i]


class PKSampler(Sampler[list[int]]):
    """Batches of P identities with up to K images each.

    Every identity appears once per epoch. Identities with a single image still join batches:
    they have no positive, so they serve only as negatives for the others.
    """

    def __init__(self, labels: torch.Tensor, p: int, k: int, seed: int = 0):
        if p < 2 or k < 2:
            raise ValueError("P x K sampling needs P >= 2 identities and K >= 2 images each")
        self.p, self.k, self.seed, self.epoch = p, k, seed, 0
        self.neighbours: list[list[int]] | None = None
        groups: dict[int, list[int]] = defaultdict(list)
        for index, label in enumerate(labels.tolist()):
            groups[label].append(index)
        self.groups = [groups[label] for label in sorted(groups)]
        if not any(len(g) >= 2 for g in self.groups):
            raise DataError("every identity has a single image: triplets need at least one "
                            "identity with two or more images")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_neighbours(self, neighbours: list[list[int]] | None) -> None:
        """Hard-negative batches mined over the whole training set: neighbours[g] lists the
        identities (group indices, sorted by label) nearest identity g, nearest first. Each
        batch then starts from a random unused identity and fills up with its nearest unused
        ones, so the miners see confusable identities together, not P random ones."""
        self.neighbours = neighbours

    def _batch_groups(self, order: list[int]) -> list[list[int]]:
        if self.neighbours is None:
            return [order[start:start + self.p] for start in range(0, len(order), self.p)]
        used, batches = set(), []
        rest = iter(order)
        for seed in order:
            if seed in used:
                continue
            batch = [seed]
            used.add(seed)
            for g in self.neighbours[seed]:
                if len(batch) == self.p:
                    break
                if g not in used:
                    batch.append(g)
                    used.add(g)
            for g in rest:   # neighbours used up: fill with the next unused identities
                if len(batch) == self.p:
                    break
                if g not in used:
                    batch.append(g)
                    used.add(g)
            batches.append(batch)
        return batches

    def __len__(self) -> int:
        return -(-len(self.groups) // self.p)

    def __iter__(self):
        rng = random.Random(self.seed * 100_003 + self.epoch)
        order = list(range(len(self.groups)))
        rng.shuffle(order)
        for groups in self._batch_groups(order):
            batch = []
            for group in (self.groups[g] for g in groups):
                batch.extend(rng.sample(group, min(self.k, len(group))))
            yield batch
