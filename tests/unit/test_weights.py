"""Where VGG19 weights come from, and the errors when they can't be used."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from workers.engine import WeightsError, load_vgg19, random_state_dict  # noqa: E402


def test_file_weights_load_exactly(weights_file):
    net, weights_id = load_vgg19(str(weights_file))
    expected = random_state_dict(1234)
    assert torch.equal(net.convs[0].weight, expected["features.0.weight"])
    assert torch.equal(net.convs[-1].weight, expected["features.28.weight"])
    assert weights_id.startswith("sha256:")
    assert load_vgg19(f"file://{weights_file}")[1] == weights_id


def test_features_only_state_dict(tmp_path):
    state = {k.removeprefix("features."): v for k, v in random_state_dict(5).items()}
    path = tmp_path / "features.pth"
    torch.save(state, path)
    net, _ = load_vgg19(str(path))
    assert torch.equal(net.convs[3].bias, state["7.bias"])


def test_random_is_deterministic_and_seeded():
    a, id_a = load_vgg19("random:3")
    b, _ = load_vgg19("random:3")
    c, id_c = load_vgg19("random")
    assert torch.equal(a.convs[5].weight, b.convs[5].weight)
    assert not torch.equal(a.convs[5].weight, c.convs[5].weight)
    assert (id_a, id_c) == ("random:3", "random:0")


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match=r"weights file not found: .*absent\.pth"):
        load_vgg19(str(tmp_path / "absent.pth"))


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.pth"
    path.write_bytes(b"\x80\x02 definitely not a checkpoint" * 10)
    with pytest.raises(WeightsError, match=r"corrupt\.pth is not a readable"):
        load_vgg19(str(path))


def test_wrong_shapes_named(tmp_path):
    state = random_state_dict(0)
    state["features.10.weight"] = torch.zeros(7, 7, 3, 3)
    del state["features.0.bias"]
    path = tmp_path / "wrong.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as info:
        load_vgg19(str(path))
    assert "conv1_1.bias missing" in str(info.value)
    assert "conv3_1.weight has shape (7, 7, 3, 3)" in str(info.value)


def test_imagenet_from_torch_hub_cache(tmp_path, monkeypatch):
    """torchvision's IMAGENET1K_V1 file, found in the hub cache (no download here)."""
    from torchvision.models import VGG19_Weights

    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    name = VGG19_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    torch.save(random_state_dict(77), checkpoints / name)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    net, weights_id = load_vgg19("imagenet")
    assert weights_id == "torchvision:IMAGENET1K_V1"
    assert torch.equal(net.convs[2].weight, random_state_dict(77)["features.5.weight"])


def test_imagenet_unavailable_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsError, match=r"IMAGENET1K_V1.*'random'"):
        load_vgg19("imagenet")
