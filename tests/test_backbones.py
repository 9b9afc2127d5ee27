import pytest
import torch

from labelclean.errors import ConfigError, DataError
from labelclean.models import BACKBONES, build_backbone
from labelclean.registry import Registry


def test_registry_is_strict():
    reg = Registry("thing")
    reg.register("a")(1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(2)
    with pytest.raises(ConfigError, match="unknown thing 'b': expected one of a"):
        reg.get("b")
    assert "test_tiny" not in BACKBONES.names() and "test_tiny" in BACKBONES


@pytest.mark.parametrize("name", ["small_cnn", "test_tiny"])
def test_backbones_split_into_features_and_linear_head(name):
    model = build_backbone(name, 5).eval()
    x = torch.randn(2, 3, 16, 16)
    h = model.features(x)
    assert h.shape == (2, model.feature_dim)
    assert torch.allclose(model.head(h), model(x))


def test_resnet18_loads_a_local_torchvision_checkpoint(tmp_path):
    import torchvision

    source = torchvision.models.resnet18(weights=None, num_classes=1000)
    torch.nn.init.constant_(source.conv1.weight, 0.25)
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    model = build_backbone("resnet18", 3, str(tmp_path / "r18.pth"))
    assert torch.all(model.features.conv1.weight == 0.25)
    assert model.head.out_features == 3 and model.mean is not None
    assert model.eval().features(torch.randn(1, 3, 32, 32)).shape == (1, 512)


def test_own_checkpoint_round_trips_and_bad_checkpoints_are_clear(tmp_path):
    model = build_backbone("small_cnn", 4)
    torch.save(model.state_dict(), tmp_path / "own.pt")
    again = build_backbone("small_cnn", 4, str(tmp_path / "own.pt"))
    assert torch.equal(again.head.weight, model.head.weight)
    other_head = build_backbone("small_cnn", 7, str(tmp_path / "own.pt"))  # features only
    assert torch.equal(other_head.features[0].weight, model.features[0].weight)
    with pytest.raises(DataError, match="does not fit backbone 'resnet18'"):
        build_backbone("resnet18", 4, str(tmp_path / "own.pt"))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(DataError, match="cannot read as a PyTorch checkpoint"):
        build_backbone("small_cnn", 4, str(tmp_path / "junk.pt"))
    with pytest.raises(DataError, match="checkpoint file not found"):
        build_backbone("small_cnn", 4, str(tmp_path / "none.pt"))
