"""`trainer head`: a linear head learned for one member of an ensemble with triplet mining, the
networks frozen; the written ensemble embeds as its members and the new head say."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from faces.checkpoint import load_model, read_checkpoint, save_checkpoint
from faces.imaging import Preprocess
from faces.models import EmbeddingNet
from trainer.cli import main
from trainer.heads import joined
from trainer.losses import TripletLoss
from trainer.miners import make_miner

from conftest import identity_image, invoke_cli, write_identity_folders


def test_hse_mobilenet_takes_a_linear_head_only_when_smaller_than_its_features():
    assert isinstance(EmbeddingNet("hse_mobilenet", 1024).head, nn.Identity)
    head = EmbeddingNet("hse_mobilenet", 64).head
    assert isinstance(head, nn.Linear) and head.weight.shape == (64, 1024) and head.bias is None
    with pytest.raises(ValueError, match="at most"):
        EmbeddingNet("hse_mobilenet", 2048)


def test_head_steps_through_the_joined_embedding_lower_the_triplet_loss():
    torch.manual_seed(0)
    labels = torch.arange(8).repeat_interleave(2)
    fixed = F.normalize(torch.randn(8, 8).repeat_interleave(2, 0) + 0.8 * torch.randn(16, 8), dim=1) * 0.8
    features = torch.randn(8, 40).repeat_interleave(2, 0) + 0.8 * torch.randn(16, 40)
    head = nn.Linear(40, 6, bias=False)
    loss = TripletLoss(make_miner("batch-hard", 0.3), 0.3)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)

    def value():
        return loss(F.normalize(joined([fixed, features], 1, head, 0.6), dim=-1), labels).loss

    before = value().item()
    for _ in range(40):
        optimizer.zero_grad()
        value().backward()
        optimizer.step()
    assert value().item() < 0.5 * before
    # The fixed member's part passes through unchanged.
    assert torch.equal(joined([fixed, features], 1, head, 0.6)[:, :8], fixed)


@pytest.fixture(scope="module")
def two_member_ensemble(tmp_path_factory):
    """A small network and an untrained headless hse_mobilenet (64 px), joined at weights 1, 0.5."""
    folder = tmp_path_factory.mktemp("head")
    torch.manual_seed(0)
    save_checkpoint(folder / "small.pt", EmbeddingNet("small", 32).eval(), Preprocess(64, 1.0), "human", 0.6,
                    flip_average=True)
    save_checkpoint(folder / "hse.pt", EmbeddingNet("hse_mobilenet", 1024).eval(), Preprocess(64, 1.0), "human", 0.6,
                    flip_average=True)
    code, output = invoke_cli(main, "ensemble", "--models", f"{folder / 'small.pt'},{folder / 'hse.pt'}",
                              "--weights", "1,0.5", "--out", folder / "both.pt")
    assert code == 0, output
    return folder / "both.pt"


def test_trainer_head_writes_the_ensemble_with_the_new_head(two_member_ensemble, tmp_path):
    faces = write_identity_folders(tmp_path / "faces", identities=15, per_identity=4)
    code, output = invoke_cli(main, "head", "--model", two_member_ensemble, "--data", faces, "--out", tmp_path / "run",
                              "--dim", 16, "-P", 4, "--steps", 20, "--eval-every", 10, "--no-progress", "--json")
    assert code == 0, output
    result = json.loads(output[output.index("{"):])
    assert result["embedding_dim"] == 32 + 16 and not result["calibrated"]
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [check["step"] for check in history] == [0, 10, 20]
    assert (tmp_path / "run" / "history.png").stat().st_size > 1000
    assert result["choose"] == next(c for c in history if c["step"] == result["step"])
    assert result["choose"]["tar_at_far_1e-3"] == max(c["tar_at_far_1e-3"] for c in history)

    payload = read_checkpoint(tmp_path / "run" / "best.pt")
    assert [m["embedding_dim"] for m in payload["members"]] == [32, 16]
    training = payload["training"]
    assert training["config"]["seed"] == 0 and training["identities"] == 9     # 15 less 3 choose, 3 test
    assert training["head"]["member"] == 1 and training["head"]["step"] == result["step"]

    # The new model: the small member's vector as it was, the hse member's features through the
    # head, each at its weight, then flip-averaged.
    old = load_model(two_member_ensemble, "cpu", precision="float32")
    new = load_model(tmp_path / "run" / "best.pt", "cpu", precision="float32")
    crops = torch.stack([new.preprocess.to_uint8(identity_image(i, 1, size=64)) for i in range(4)])
    inputs = new.preprocess.normalise(crops)
    small, hse = old.net.members
    head = new.net.members[1].head
    scales = [1 / np.hypot(1, 0.5), 0.5 / np.hypot(1, 0.5)]
    with torch.inference_mode():
        expected = sum(torch.cat([small(x) * scales[0], F.normalize(head(hse.backbone(x)), dim=1) * scales[1]], 1)
                       for x in (inputs, inputs.flip(3)))
    assert isinstance(head, nn.Linear) and head.weight.shape == (16, 1024)
    assert np.allclose(new.embed_tensor(crops), F.normalize(expected, dim=1).numpy(), atol=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--member", 0], "a head can be learned for dlib_resnet, hse_mobilenet only"),
    (["--member", 2], "has 2 members"),
])
def test_trainer_head_refuses_members_it_cannot_learn(two_member_ensemble, identity_folders, tmp_path, args, message):
    code, output = invoke_cli(main, "head", "--model", two_member_ensemble, "--data", identity_folders,
                              "--out", tmp_path / "run", *args)
    assert code != 0 and message in output, output


def test_trainer_head_refuses_a_single_network(fresh_checkpoint, identity_folders, tmp_path):
    code, output = invoke_cli(main, "head", "--model", fresh_checkpoint, "--data", identity_folders,
                              "--out", tmp_path / "run")
    assert code != 0 and "not an ensemble" in output and str(fresh_checkpoint) in output, output
