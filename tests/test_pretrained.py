"""Pretrained encoders (torchvision, timm, open_clip) from local checkpoint files, with their own
preprocessing, and ``--finetune none``: embed once, cache, train on the vectors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from labelclean import RunConfig, audit
from labelclean.errors import ConfigError, DataError
from labelclean.models.pretrained import load_encoder
from labelclean.scoring import rank_posteriors


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))


def test_torchvision_encoder_loads_a_local_file_with_the_weights_preset(tmp_path, image):
    import torchvision

    torch.manual_seed(123)
    net = torchvision.models.get_model("regnet_x_400mf", weights=None)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    enc = load_encoder("tv:regnet_x_400mf", str(tmp_path / "w.pt"))
    preset = torchvision.models.get_model_weights("regnet_x_400mf").DEFAULT.transforms()
    net.fc = torch.nn.Identity()
    net.eval()
    with torch.no_grad():
        expected = net(preset(image)[None])
        got = enc.model(enc.transform(image)[None])
    assert enc.dim == expected.shape[1] == 400
    assert expected.abs().max() > 0.01 and torch.allclose(got, expected, atol=1e-5)
    assert enc.preprocessing["crop"] == 224 and enc.preprocessing["resize"] == [232]
    assert "sha256" in enc.weights


def test_timm_encoder_loads_a_local_checkpoint_through_timm(tmp_path, image):
    timm = pytest.importorskip("timm")
    torch.manual_seed(7)
    net = timm.create_model("test_resnet")  # with its classifier, as checkpoints are saved
    torch.save(net.state_dict(), tmp_path / "timm.pth")
    enc = load_encoder("timm:test_resnet", str(tmp_path / "timm.pth"))
    ref = timm.create_model("test_resnet", num_classes=0)
    ref.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("fc.")})
    ref.eval()
    config = timm.data.resolve_data_config({}, model=ref)
    with torch.no_grad():
        expected = ref(timm.data.create_transform(**config)(image)[None])
        got = enc.model(enc.transform(image)[None])
    assert torch.allclose(got, expected, atol=1e-5)
    assert enc.preprocessing["input_size"] == list(config["input_size"])


def test_open_clip_encoder_loads_a_local_file(tmp_path, image):
    open_clip = pytest.importorskip("open_clip")
    config = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
              "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "tiny-clip-test.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "cfg")
    torch.manual_seed(3)
    model = open_clip.create_model("tiny-clip-test")
    torch.save(model.state_dict(), tmp_path / "clip.pt")
    enc = load_encoder("clip:tiny-clip-test", str(tmp_path / "clip.pt"))
    _, _, preprocess = open_clip.create_model_and_transforms("tiny-clip-test")
    model.eval()
    with torch.no_grad():
        expected = model.encode_image(preprocess(image)[None])
        got = enc.model(enc.transform(image)[None])
    assert enc.dim == 16 and torch.allclose(got, expected, atol=1e-5)


def test_bad_backbone_names_and_weights_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="no classifier layer found"):
        load_encoder("tv:squeezenet1_0", None)
    with pytest.raises(ConfigError, match="not a torchvision classification model"):
        load_encoder("tv:no_such_net", None)
    with pytest.raises(ConfigError, match="expected FAMILY:NAME"):
        load_encoder("keras:resnet", None)
    with pytest.raises(DataError, match="checkpoint file not found"):
        load_encoder("tv:mobilenet_v3_small", str(tmp_path / "missing.pt"))
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(DataError, match="does not fit tv:mobilenet_v3_small"):
        load_encoder("tv:mobilenet_v3_small", str(tmp_path / "other.pt"))


def test_finetune_none_embeds_once_and_features_give_the_same_scores(tiny, tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("LABELCLEAN_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(5)
    torch.save(torchvision.models.get_model("regnet_x_400mf", weights=None).state_dict(),
               tmp_path / "w.pt")
    common = {"dataset": str(tiny.csv), "trusted": str(tiny.trusted), "epochs": 3, "report": False}
    first = audit(RunConfig(**common, backbone="tv:regnet_x_400mf", weights=str(tmp_path / "w.pt"),
                            out=str(tmp_path / "a")))
    assert first.summary["input"] == "embeddings" and first.config.finetune == "none"
    encoder = json.loads((tmp_path / "a" / "encoder.json").read_text())
    assert encoder["dim"] == 400 and encoder["cached"] is False
    again = audit(RunConfig(**common, backbone="tv:regnet_x_400mf", weights=str(tmp_path / "w.pt"),
                            out=str(tmp_path / "b"), method="ce"))
    assert json.loads((tmp_path / "b" / "encoder.json").read_text())["cached"] is True
    assert again.summary["method"] == "ce"
    same = audit(RunConfig(**common, features=str(tmp_path / "a" / "embeddings.parquet"),
                           id_column="id", out=str(tmp_path / "c")))
    assert np.array_equal(first.scores["suspicion"].to_numpy(), same.scores["suspicion"].to_numpy())


def test_finetune_head_trains_on_images_with_the_encoder_frozen_and_weights_the_plain_head(
        tiny, tmp_path):
    import torchvision

    torch.manual_seed(11)
    net = torchvision.models.get_model("mobilenet_v3_small", weights=None)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    result = audit(RunConfig(dataset=str(tiny.csv), trusted=str(tiny.trusted), epochs=2,
                             backbone="tv:mobilenet_v3_small", weights=str(tmp_path / "w.pt"),
                             finetune="head", out=str(tmp_path / "run"), report=False))
    assert result.summary["input"] != "embeddings" and result.config.finetune == "head"
    summary = result.summary["method_summary"]
    # The network is a linear head on the frozen encoder's features: a head refitted on them
    # unweighted would repeat the training loss, so the plain head keeps the ranking's weights.
    assert summary["probe_weighted"] is True
    assert "cross-fitted head" in summary["ranked_by"]
    # Fixed features: the members train the head whatever the exam (train_on=auto).
    assert summary["trained_on_because"].startswith("the features are fixed")
    assert result.scores["probe_suspicion"].between(0, 1).all()
    # Frozen: the encoder's weights in the checkpoint are the file's.
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]
    encoder = {k.split(".", 1)[1]: v for k, v in saved.items() if k.startswith("features.")}
    original = net.state_dict()
    assert encoder and set(encoder) <= set(original), sorted(saved)[:5]
    assert all(torch.equal(v, original[k]) for k, v in encoder.items())


def test_a_frozen_encoder_with_an_exam_orders_by_the_cross_fitted_head(tmp_path):
    """A frozen pretrained encoder on images, with verified rows drawn from the dataset: the
    members train the head, and the exam's default order is the plain cross-fitted head, with
    the corrected head and the two heads' mean rank as its alternatives."""
    import torchvision

    from tests.test_exam import _big_tiny

    tiny, trusted = _big_tiny(tmp_path, flips=36)
    torch.manual_seed(11)
    torch.save(torchvision.models.get_model("mobilenet_v3_small", weights=None).state_dict(),
               tmp_path / "w.pt")
    result = audit(RunConfig(dataset=str(tiny.csv), trusted=str(trusted), epochs=2,
                             backbone="tv:mobilenet_v3_small", weights=str(tmp_path / "w.pt"),
                             finetune="head", out=str(tmp_path / "run"), report=False))
    s = result.summary
    assert s["estimates"]["exam_wrong"] >= 5 and "ranking_choice" in s
    summary = s["method_summary"]
    assert sorted(summary["trained_on"]) == ["ieg", "mlc", "mlnt", "mslg"]
    assert summary["ranked_by"].startswith("a cross-fitted head weighted by")
    assert set(s["ranking_choice"]["exam_auroc"]) == {"default", "corrected head",
                                                       "plain and corrected heads"}
    assert s["ranking_choice"]["chosen"] == "default"
    # The order is the plain head's, on the final views' scale (their values re-assigned by the
    # head's ranks; a random frozen encoder leaves the views nearly flat, so values repeat).
    every = result.scores
    expected = rank_posteriors(every["probe_suspicion"].to_numpy(), every["final_views_suspicion"].to_numpy())
    free = ~every["verified"].to_numpy()
    assert np.abs(every["suspicion"].to_numpy()[free] - expected[free]).max() < 1e-5
