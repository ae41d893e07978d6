"""Training on tiny generated data, resume, the P x K sampler, splits and bad input."""
import json
from collections import Counter

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from faces.checkpoint import load_model, read_checkpoint, save_checkpoint
from faces.imaging import Preprocess
from faces.models import EmbeddingNet
from trainer.cli import main
from trainer.evaluate import STRICT_FAR
from trainer.data import DataError, PKSampler, read_pairs, scan_identities, split_identities, write_split

from conftest import identity_image, write_identity_folders

TINY = ["--arch", "small", "--input-size", "32", "-P", "6", "-K", "4", "--no-progress",
        "--workers", "0", "--lr", "3e-3"]


def run(*args):
    result = CliRunner().invoke(main, list(map(str, args)))
    return result


def test_sampler_draws_p_identities_of_up_to_k_images_each_once_per_epoch():
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 1 + [3] * 6 + [4] * 5)
    sampler = PKSampler(labels, p=2, k=4, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3
    seen = Counter()
    for batch in batches:
        per_identity = Counter(labels[batch].tolist())
        assert len(per_identity) <= 2 and max(per_identity.values()) <= 4
        assert len(set(batch)) == len(batch)
        seen.update(per_identity.keys())
    assert set(seen) == {0, 1, 2, 3, 4} and max(seen.values()) == 1
    sampler.set_epoch(1)
    assert list(sampler) != batches
    sampler.set_epoch(0)
    assert list(sampler) == batches


def test_identity_split_is_three_way_disjoint_and_reproducible():
    names = [f"id{i}" for i in range(50)]
    split = split_identities(names, 0.2, 0.3, seed=7)
    assert (len(split.train), len(split.choose), len(split.test)) == (25, 10, 15)
    assert sorted(split.train + split.choose + split.test) == sorted(names)
    assert not (set(split.train) & set(split.choose) or set(split.train) & set(split.test)
                or set(split.choose) & set(split.test))
    assert split_identities(list(reversed(names)), 0.2, 0.3, seed=7) == split
    assert split_identities(names, 0.2, 0.3, seed=8) != split
    # choose does not depend on the test fraction: what a two-way split held out stays choose
    assert split_identities(names, 0.2, 0.0, seed=7).choose == split.choose


def test_identity_split_refuses_fractions_that_leave_nothing_to_train():
    with pytest.raises(DataError, match="leave identities to train on"):
        split_identities(["a", "b", "c"], 0.5, 0.5)


def test_split_command_writes_three_parts_and_two_pairs_files(tmp_path):
    root = tmp_path / "people"
    for person in range(20):
        for n in range(3):
            folder = root / f"p{person:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            identity_image(person, n).save(folder / f"p{person:02d}_{n:04d}.jpg")
    counts = write_split(root, tmp_path / "split", 0.25, 0.25, seed=3)
    assert (counts["train_identities"], counts["choose_identities"], counts["test_identities"]) == (10, 5, 5)
    parts = {part: {p.name for p in (tmp_path / "split" / part).iterdir()} for part in ("train", "choose", "test")}
    assert parts["choose"] == set(split_identities([f"p{i:02d}" for i in range(20)], 0.25, 0.25, 3).choose)
    for part in ("choose", "test"):
        named = {field for pair in read_pairs(tmp_path / "split" / f"{part}_pairs.txt", tmp_path / "split" / part)
                 for field in (pair.first.parent.name, pair.second.parent.name)}
        assert named <= parts[part]


def mean_distances(model, root):
    samples = scan_identities(root)
    from faces.imaging import load_image
    embeddings = model.embed_images([load_image(s.path) for s in samples])
    labels = np.array([s.identity for s in samples])
    d = np.linalg.norm(embeddings[:, None] - embeddings[None], axis=2)
    same = labels[:, None] == labels[None]
    off_diagonal = ~np.eye(len(labels), dtype=bool)
    return d[same & off_diagonal].mean(), d[~same].mean()


@pytest.mark.parametrize("loss,miner", [("triplet", "batch-hard"), ("joint", "semi-hard"),
                                        ("contrastive", "batch-hard")])
def test_training_learns_to_separate_identities(tmp_path, loss, miner):
    data = write_identity_folders(tmp_path / "faces", identities=8, per_identity=6, size=40)
    out = tmp_path / "run"
    result = run("train", "--data", data, "--out", out, "--epochs", 12, "--choose-fraction", 0,
                 "--loss", loss, "--miner", miner, *TINY)
    assert result.exit_code == 0, result.output
    epochs = [json.loads(line) for line in (out / "epochs.jsonl").read_text().splitlines()]
    assert len(epochs) == 12
    assert np.mean([e["loss"] for e in epochs[-3:]]) < np.mean([e["loss"] for e in epochs[:3]])
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert {"active", "d_pos", "d_neg"} <= set(steps[0])
    same, different = mean_distances(load_model(out / "model.pt", device="cpu"), data)
    assert same < different
    assert (out / "training.png").stat().st_size > 5000


def test_checkpoint_carries_everything_and_resume_continues(tmp_path):
    data = write_identity_folders(tmp_path / "faces", identities=10, per_identity=5, size=40)
    out = tmp_path / "run"
    assert run("train", "--data", data, "--out", out, "--epochs", 2, "--species", "dog", *TINY).exit_code == 0
    first = [json.loads(line) for line in (out / "epochs.jsonl").read_text().splitlines()]
    result = run("train", "--data", data, "--out", out, "--epochs", 3, "--species", "dog", "--resume", *TINY)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "epochs.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[:2] == first
    checkpoint = read_checkpoint(out / "model.pt")
    assert checkpoint["arch"] == "small" and checkpoint["embedding_dim"] == 128
    assert checkpoint["species"] == "dog" and checkpoint["preprocess"]["input_size"] == 32
    points = checkpoint["operating_points"]     # chosen on the 2 held-out identities
    assert checkpoint["threshold"] == points["strict"]["threshold"] and points["strict"]["far"] <= STRICT_FAR
    assert points["different_pairs"] == 5 * 5 and points["data"] == str(out / "split" / "choose")
    assert points["balanced"]["threshold"] >= points["strict"]["threshold"]
    assert checkpoint["training"]["metrics"]["epoch"] == 3 and "trainer" in checkpoint["training"]["command"]
    assert all(v.dtype == torch.float16 for v in checkpoint["state_dict"].values() if v.is_floating_point())
    # The split is written once and is disjoint.
    train = {p.name for p in (out / "split" / "train").iterdir()}
    val = {p.name for p in (out / "split" / "choose").iterdir()}
    assert len(val) == 2 and not train & val


def test_training_from_a_checkpoint_keeps_its_preprocessing_and_frozen_layers(tmp_path):
    data = write_identity_folders(tmp_path / "faces", identities=8, per_identity=5, size=40)
    start = tmp_path / "start.pt"
    torch.manual_seed(0)
    save_checkpoint(start, EmbeddingNet("small", 128), Preprocess(32, 1.0, mean=(0.4, 0.45, 0.5)), "human", 0.5)
    out = tmp_path / "run"
    result = run("train", "--data", data, "--out", out, "--epochs", 2, "--choose-fraction", 0, "--species", "dog",
                 "--init", start, "--freeze", 3, "-P", 6, "-K", 4, "--no-progress", "--workers", 0, "--lr", 3e-3)
    assert result.exit_code == 0, result.output
    checkpoint = read_checkpoint(out / "model.pt")
    assert checkpoint["arch"] == "small" and checkpoint["species"] == "dog"
    assert checkpoint["preprocess"]["input_size"] == 32 and checkpoint["preprocess"]["mean"] == (0.4, 0.45, 0.5)
    # --input-size: the same network fed larger faces (DogFaceNet's 224 px crops, say).
    larger = run("train", "--data", data, "--out", tmp_path / "larger", "--epochs", 1, "--choose-fraction", 0,
                 "--init", start, "--input-size", 40, "-P", 6, "-K", 4, "--no-progress", "--workers", 0)
    assert larger.exit_code == 0, larger.output
    resized = read_checkpoint(tmp_path / "larger" / "model.pt")["preprocess"]
    assert resized["input_size"] == 40 and resized["mean"] == (0.4, 0.45, 0.5)
    before, after = load_model(start, device="cpu").net, load_model(out / "model.pt", device="cpu").net
    layers = [name for name, module in before.backbone.named_modules()
              if next(module.parameters(recurse=False), None) is not None]
    for name, value in before.backbone.state_dict().items():
        frozen = any(name.startswith(layer + ".") for layer in layers[:3])
        changed = not torch.equal(value, after.backbone.state_dict()[name])
        if value.is_floating_point() and not name.endswith("num_batches_tracked"):
            assert changed != frozen or "running" in name, name


def test_bad_training_data_gives_a_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run("train", "--data", empty, "--out", tmp_path / "r1", *TINY)
    assert result.exit_code != 0 and "no images found" in result.output and "Traceback" not in result.output

    one = tmp_path / "one"
    (one / "solo").mkdir(parents=True)
    for i in range(3):
        identity_image(0, i, 32).save(one / "solo" / f"{i}.jpg")
    result = run("train", "--data", one, "--out", tmp_path / "r2", "--choose-fraction", 0, *TINY)
    assert result.exit_code != 0 and "at least two identities" in result.output


def test_corrupt_and_fake_images_are_skipped_by_name(tmp_path, caplog):
    data = write_identity_folders(tmp_path / "faces", identities=6, per_identity=4, size=32)
    (data / "person_00" / "broken.jpg").write_bytes((data / "person_00" / "person_00_0001.jpg").read_bytes()[:200])
    (data / "person_01" / "notes.jpg").write_text("this is a text file")
    result = run("train", "--data", data, "--out", tmp_path / "run", "--epochs", 1, "--choose-fraction", 0, *TINY)
    assert result.exit_code == 0, result.output
    skipped = " ".join(r.getMessage() for r in caplog.records)
    assert "broken.jpg" in skipped and "notes.jpg: not an image" in skipped


@pytest.mark.parametrize("arch", ["dlib_resnet", "small"])
def test_inference_copy_folds_scale_and_shift_without_changing_outputs(arch):
    """Embedding runs models.inference_copy: the same vectors as the trained network, with no
    scale-and-shift layer left, while the trained network keeps its layers and weights."""
    from faces.models import ChannelAffine, inference_copy
    torch.manual_seed(0)
    net = EmbeddingNet(arch)
    with torch.no_grad():   # layers that are not the identity, as after training
        for module in net.modules():
            if isinstance(module, (ChannelAffine, torch.nn.BatchNorm2d)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.uniform_(-0.3, 0.3)
                    module.running_var.uniform_(0.5, 2.0)
    net.eval()
    before = {key: value.clone() for key, value in net.state_dict().items()}
    size = 150 if arch == "dlib_resnet" else 64
    inputs = torch.randn(3, 3, size, size)
    copy = inference_copy(net)
    with torch.no_grad():
        expected = net(inputs)
        got = copy(inputs.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(expected, got, atol=1e-5), (expected - got).abs().max()
    scale_and_shift = (ChannelAffine, torch.nn.BatchNorm2d)
    assert not any(isinstance(m, scale_and_shift) for m in copy.modules())
    assert any(isinstance(m, scale_and_shift) for m in net.modules())
    assert all(torch.equal(before[key], value) for key, value in net.state_dict().items())


def test_hard_batches_put_each_identity_with_its_nearest_identities():
    labels = torch.tensor([g for g in range(8) for _ in range(3)])
    sampler = PKSampler(labels, p=2, k=2, seed=0)
    # Identities pair up as nearest neighbours: 0-5, 1-6, 2-7, 3-4.
    partner = {0: 5, 5: 0, 1: 6, 6: 1, 2: 7, 7: 2, 3: 4, 4: 3}
    sampler.set_neighbours([[partner[g]] + [h for h in range(8) if h not in (g, partner[g])] for g in range(8)])
    batches = list(sampler)
    assert len(batches) == len(sampler) == 4
    pairs = {frozenset(labels[b].tolist()) for b in batches}
    assert pairs == {frozenset(p) for p in [(0, 5), (1, 6), (2, 7), (3, 4)]}
    assert sorted(i for b in batches for i in set(labels[b].tolist())) == list(range(8))


def test_a_fine_tuning_step_lowers_the_triplet_loss():
    """From a checkpoint, with the early layers frozen and a small learning rate, one step of
    batch-hard triplet loss on a generated P x K batch lowers that batch's loss."""
    from trainer.losses import TripletLoss
    from trainer.miners import make_miner
    from trainer.train import freeze_early_layers
    torch.manual_seed(0)
    net = EmbeddingNet("small", 128)
    preprocess = Preprocess(32, 1.0)
    images = torch.stack([torch.from_numpy(np.array(identity_image(i, v, 32))).permute(2, 0, 1)
                          for i in range(6) for v in range(4)])
    labels = torch.tensor([i for i in range(6) for _ in range(4)])
    freeze_early_layers(net, 3)
    loss_fn = TripletLoss(make_miner("batch-hard", 0.2), 0.2)
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    net.train()
    inputs = preprocess.normalise(images)
    before = loss_fn(net(inputs), labels).loss
    optimizer.zero_grad()
    before.backward()
    optimizer.step()
    after = loss_fn(net(inputs), labels).loss
    assert after.item() < before.item()


def test_layer_decay_gives_layers_near_the_input_smaller_learning_rates(tmp_path):
    """--layer-decay: each trainable backbone layer in its own group, the rate falling by the
    factor per layer towards the input; frozen layers in none; every trainable parameter in
    exactly one group; 1 is one group at --lr; outside (0, 1] refused by the CLI."""
    from trainer.losses import TripletLoss
    from trainer.miners import make_miner
    from trainer.train import backbone_layers, freeze_early_layers, parameter_groups
    net = EmbeddingNet("small", 128)
    freeze_early_layers(net, 2)
    loss = TripletLoss(make_miner("batch-hard", 0.2), 0.2)
    groups = parameter_groups(net, loss, 1e-3, 0.5)
    layers = backbone_layers(net)
    trainable = [p for p in net.parameters() if p.requires_grad]
    grouped = [id(p) for group in groups for p in group["params"]]
    assert sorted(grouped) == sorted(id(p) for p in trainable) and len(grouped) == len(set(grouped))
    assert groups[0]["lr"] == 1e-3
    rates = [group["lr"] for group in groups[1:]]
    assert rates == [1e-3 * 0.5 ** depth for depth in range(len(layers) - 2)]     # output side first
    assert {id(p) for p in groups[-1]["params"]} == {id(p) for p in layers[2].parameters(recurse=False)}
    [single] = parameter_groups(net, loss, 1e-3, 1.0)
    assert len(single["params"]) == len(trainable) and single["lr"] == 1e-3
    data = write_identity_folders(tmp_path / "faces", identities=6, per_identity=3, size=40)
    result = run("train", "--data", data, "--out", tmp_path / "run", "--layer-decay", 0, "--epochs", 1)
    assert result.exit_code != 0 and "--layer-decay" in result.output and "0<x<=1" in result.output


def test_fine_tuning_options_warm_up_margin_softmax_hard_batches_and_choosing_by_tar(tmp_path):
    data = write_identity_folders(tmp_path / "faces", identities=12, per_identity=5, size=40)
    start = tmp_path / "start.pt"
    torch.manual_seed(0)
    save_checkpoint(start, EmbeddingNet("small", 128), Preprocess(32, 1.0), "human", 0.5)
    out = tmp_path / "run"
    result = run("train", "--data", data, "--out", out, "--epochs", 2, "--init", start, "--freeze", 3,
                 "--loss", "joint", "--softmax-margin", 0.2, "--warmup-steps", 2, "--hard-batches",
                 "--select", "tar", "--keep-epochs", "--augment", "strong", "--choose-fraction", 0.25,
                 "--test-fraction", 0.2, "-P", 4, "-K", 4, "--no-progress", "--workers", 0, "--lr", 1e-3,
                 "--layer-decay", 0.9)
    assert result.exit_code == 0, result.output
    epochs = [json.loads(line) for line in (out / "epochs.jsonl").read_text().splitlines()]
    assert {"val_tar_at_far_1e-3", "val_tar_at_far_1e-4", "val_fnir_at_fpir_0.01"} <= set(epochs[0])
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert "cross_entropy" in steps[0]
    assert (out / "epoch-1.pt").is_file() and (out / "epoch-2.pt").is_file()
    best = max(range(2), key=lambda e: (epochs[e]["val_tar_at_far_1e-3"], e))
    assert read_checkpoint(out / "best.pt")["training"]["epoch"] == best + 1
    # Warm-up ends where the schedule takes over: epoch 1's logged lr is the scheduled one.
    assert epochs[0]["lr"] == pytest.approx(1e-3)


def test_crop_cache_gives_the_same_crops_and_is_read_back(tmp_path, monkeypatch):
    from trainer import data as data_module
    folders = write_identity_folders(tmp_path / "faces", identities=2, per_identity=2, size=40)
    paths = [s.path for s in scan_identities(folders)]
    preprocess = Preprocess(32, 1.0)
    plain, kept, _ = data_module.load_faces(paths, preprocess, progress=False)
    monkeypatch.setenv(data_module.CROP_CACHE_ENV, str(tmp_path / "cache"))
    first, _, _ = data_module.load_faces(paths, preprocess, progress=False)
    assert len(list((tmp_path / "cache").rglob("*.pt"))) == len(paths)
    monkeypatch.setattr(data_module, "load_image", lambda path: (_ for _ in ()).throw(AssertionError("decoded")))
    second, kept_again, _ = data_module.load_faces(paths, preprocess, progress=False)
    assert torch.equal(plain, first) and torch.equal(first, second) and kept == kept_again
