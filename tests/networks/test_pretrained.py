from __future__ import annotations

import logging
import re

import pytest
import torch
from timm.models.swin_transformer import SwinTransformer

from advmim_lightning.networks import (
    IMAGENET_SWIN_T,
    SwinUNet,
    UNet,
    load_pretrained_swin,
    load_public_checkpoint,
    public_key_to_local,
    random_init_warning,
)
from advmim_lightning.networks.pretrained import hf_cache_dir, hub_model_id
from tiny import write_hf_cache

# ----------------------------------------------------------------------------------------------
# ImageNet Swin (timm and Microsoft formats)


@pytest.fixture
def timm_state(swin_kwargs) -> dict[str, torch.Tensor]:
    """A tiny timm Swin matching the tiny SwinUNet, with one extra block in stage 2 (like Swin-T's
    depth-6 stage against the lite model's depth 2)."""
    timm_model = SwinTransformer(
        img_size=64,
        patch_size=4,
        in_chans=3,
        num_classes=5,
        embed_dim=swin_kwargs["embed_dim"],
        depths=(1, 1, 2, 1),
        num_heads=swin_kwargs["num_heads"],
        window_size=swin_kwargs["window_size"],
    )
    return timm_model.state_dict()


def _to_microsoft(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """timm naming -> the official checkpoint's: patch merging at the end of the previous stage,
    head.fc -> head, and the persistent buffers of the original code."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        key = re.sub(
            r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) - 1}.downsample", key
        )
        out[key.replace("head.fc.", "head.")] = tensor
        if key.endswith("attn.relative_position_bias_table"):
            out[key.replace("relative_position_bias_table", "relative_position_index")] = (
                torch.zeros(4, 4, dtype=torch.long)
            )
    out["layers.0.blocks.1.attn_mask"] = torch.zeros(16, 4, 4)
    return {"model": out}


def test_timm_state_dict_round_trips(tmp_path, swin_kwargs, timm_state, caplog) -> None:
    path = tmp_path / "swin_timm.pth"
    torch.save(timm_state, path)
    model = SwinUNet(**swin_kwargs)
    with caplog.at_level(logging.INFO, logger="advmim_lightning.networks.pretrained"):
        report = load_pretrained_swin(model, path)
    state = model.state_dict()

    assert report.format == "timm"
    # the encoder loads by name (timm already puts patch merging where SwinUNet has it)
    for key, tensor in timm_state.items():
        if key.startswith("head.") or key.startswith("layers.2.blocks.1."):
            continue
        assert torch.equal(state[key], tensor), key
        assert key in report.loaded
    assert "layers.1.downsample.reduction.weight" in report.loaded
    # encoder stage i is copied into decoder stage 3 - i
    for stage in range(3):
        for key in ("attn.qkv.weight", "attn.relative_position_bias_table", "mlp.fc2.bias"):
            source = timm_state[f"layers.{stage}.blocks.0.{key}"]
            assert torch.equal(state[f"layers_up.{3 - stage}.blocks.0.{key}"], source)
    # the extra block and its mirror are skipped; the classifier is unused
    assert report.skipped["layers.2.blocks.1.attn.qkv.weight"] == "not in the model"
    assert report.skipped["layers_up.1.blocks.1.attn.qkv.weight"] == (
        "not in the model (from layers.2.blocks.1.attn.qkv.weight)"
    )
    assert report.skipped["layers_up.0.blocks.0.norm1.weight"].startswith("not in the model")
    assert set(report.unused) == {"head.fc.weight", "head.fc.bias"}
    for key in (
        "mask_token",
        "head.weight",
        "concat_back_dim.1.weight",
        "final_expand.expand.weight",
    ):
        assert key in report.not_loaded
    text = str(report)
    assert "timm weights from" in text
    assert "layers.2.blocks.1.* (" in text  # one line per skipped block
    assert "ImageNet classification head" in text
    assert text in caplog.text


def test_loaded_encoder_computes_what_timm_computes(tmp_path, swin_kwargs) -> None:
    timm_model = SwinTransformer(
        img_size=64,
        patch_size=4,
        num_classes=0,
        embed_dim=swin_kwargs["embed_dim"],
        depths=swin_kwargs["depths"],
        num_heads=swin_kwargs["num_heads"],
        window_size=swin_kwargs["window_size"],
    ).eval()
    path = tmp_path / "swin.pth"
    torch.save(timm_model.state_dict(), path)
    net = SwinUNet(**swin_kwargs, pretrained=path).eval()
    image = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        tokens = net.embed(image)
        for stage in net.layers:
            tokens = stage(tokens)
        expected = timm_model.forward_features(image.repeat(1, 3, 1, 1))
    torch.testing.assert_close(net.norm(tokens), expected)


def test_microsoft_checkpoint_loads_like_timm(tmp_path, swin_kwargs, timm_state) -> None:
    torch.save(timm_state, tmp_path / "timm.pth")
    torch.save(_to_microsoft(timm_state), tmp_path / "microsoft.pth")
    from_timm = SwinUNet(**swin_kwargs)
    load_pretrained_swin(from_timm, tmp_path / "timm.pth")
    from_microsoft = SwinUNet(**swin_kwargs)
    report = load_pretrained_swin(from_microsoft, tmp_path / "microsoft.pth")
    assert report.format == "microsoft"
    assert "layers.2.downsample.reduction.weight" in report.loaded  # from layers.1.downsample
    assert report.unused["layers.0.blocks.1.attn_mask"].startswith("buffer")
    assert report.unused["layers.0.blocks.0.attn.relative_position_index"].startswith("buffer")
    loaded = from_microsoft.state_dict()
    for key in from_timm.state_dict().keys() - set(report.not_loaded):
        assert torch.equal(loaded[key], from_timm.state_dict()[key]), key


def test_pretrained_argument_loads_and_shape_mismatches_are_reported(
    tmp_path, swin_kwargs, timm_state
) -> None:
    path = tmp_path / "swin.pth"
    torch.save({"state_dict": timm_state}, path)
    net = SwinUNet(**swin_kwargs, pretrained=str(path))
    assert torch.equal(
        net.layers[0].blocks[0].attn.qkv.weight, timm_state["layers.0.blocks.0.attn.qkv.weight"]
    )

    two_channels = SwinUNet(**{**swin_kwargs, "in_channels": 2})
    report = load_pretrained_swin(two_channels, path)
    assert report.skipped["patch_embed.proj.weight"] == (
        "shape mismatch: file (12, 3, 4, 4) vs model (12, 2, 4, 4)"
    )
    assert "patch_embed.proj.weight" in report.not_loaded
    assert "patch_embed.norm.weight" in report.loaded


def test_missing_file_says_what_to_download(tmp_path, swin_kwargs) -> None:
    missing = tmp_path / "weights" / "swin_tiny_patch4_window7_224.pth"
    with pytest.raises(FileNotFoundError) as info:
        SwinUNet(**swin_kwargs, pretrained=missing)
    message = str(info.value)
    assert str(missing) in message
    assert "download swin_tiny_patch4_window7_224.pth yourself" in message
    assert "Local files are never downloaded" in message
    assert IMAGENET_SWIN_T in message  # the other way to give weights


# ----------------------------------------------------------------------------------------------
# ImageNet Swin from the Hugging Face cache (a cache folder built here; never the network)


@pytest.mark.parametrize(
    ("filename", "env"),
    [("model.safetensors", "HF_HUB_CACHE"), ("pytorch_model.bin", "HF_HOME")],
)
def test_hub_name_loads_from_the_hugging_face_cache(
    tmp_path, monkeypatch, swin_kwargs, timm_state, caplog, filename, env
) -> None:
    if env == "HF_HUB_CACHE":
        cache = tmp_path / "hf"
        monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    else:  # HF_HOME/hub, the default layout under a Hugging Face home
        monkeypatch.delenv("HF_HUB_CACHE")
        monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
        cache = tmp_path / "home" / "hub"
    assert hf_cache_dir() == cache
    path = write_hf_cache(cache, IMAGENET_SWIN_T, timm_state, filename)

    with caplog.at_level(logging.INFO, logger="advmim_lightning.networks.pretrained"):
        net = SwinUNet(**swin_kwargs, pretrained=IMAGENET_SWIN_T)
    state = net.state_dict()
    for key, tensor in timm_state.items():  # the encoder holds the cache's tensors
        if key.startswith("head.") or key.startswith("layers.2.blocks.1."):
            continue
        if key.endswith(("relative_position_index", "attn_mask")):
            continue
        assert torch.equal(state[key], tensor), key
    for stage in range(3):  # and encoder stage i is copied into decoder stage 3 - i
        assert torch.equal(
            state[f"layers_up.{3 - stage}.blocks.0.attn.qkv.weight"],
            timm_state[f"layers.{stage}.blocks.0.attn.qkv.weight"],
        )
    source = f"{IMAGENET_SWIN_T} (Hugging Face cache: {path})"
    assert net.weights_source == source
    assert f"timm weights from {source}" in caplog.text

    report = load_pretrained_swin(SwinUNet(**swin_kwargs), IMAGENET_SWIN_T)
    assert report.format == "timm" and report.source == source
    encoder = [k for k in timm_state if not k.startswith("head.")]
    encoder = [k for k in encoder if not k.endswith(("relative_position_index", "attn_mask"))]
    kept = [k for k in encoder if not k.startswith("layers.2.blocks.1.")]
    mirrored = [
        re.sub(r"^layers\.(\d)\.", lambda m: f"layers_up.{3 - int(m[1])}.", k)
        for k in kept
        if re.match(r"^layers\.[0-2]\.blocks\.", k)  # layers_up.0 has no blocks
    ]
    assert sorted(report.loaded) == sorted(kept + mirrored)
    assert set(report.unused) >= {"head.fc.weight", "head.fc.bias"}
    assert report.skipped["layers.2.blocks.1.attn.qkv.weight"] == "not in the model"
    assert report.skipped["layers_up.1.blocks.1.attn.qkv.weight"] == (
        "not in the model (from layers.2.blocks.1.attn.qkv.weight)"
    )
    assert "layers_up.0.blocks.0.norm1.weight" in report.skipped  # layers_up.0 only expands
    assert "mask_token" in report.not_loaded and "head.weight" in report.not_loaded


def test_hub_name_offline_and_not_cached_says_how_to_get_the_weights(tmp_path, swin_kwargs):
    cache = hf_cache_dir()  # conftest: an empty folder, HF_HUB_OFFLINE=1
    with pytest.raises(FileNotFoundError) as info:
        SwinUNet(**swin_kwargs, pretrained=IMAGENET_SWIN_T)
    message = str(info.value)
    assert message.startswith(
        f"networks/pretrained.py: the Swin ImageNet weights '{IMAGENET_SWIN_T}' are not in the "
        f"Hugging Face cache {cache} and cannot be downloaded here (HF_HUB_OFFLINE is set)."
    )
    assert (
        'run `python -c "from huggingface_hub import hf_hub_download; '
        f"hf_hub_download('{IMAGENET_SWIN_T}', 'model.safetensors')\"`" in message
    )
    assert "models--timm--swin_tiny_patch4_window7_224.ms_in1k" in message
    assert "pass a local weights file" in message and "init_args.pretrained" in message
    assert "\n" not in message


def test_a_model_not_cached_is_downloaded_once_where_online(
    tmp_path, monkeypatch, swin_kwargs, timm_state
) -> None:
    """Online: the first load downloads model.safetensors into the cache, later loads read the
    cache. huggingface_hub's download is replaced by a stand-in that writes the cache file."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.delenv("HF_HUB_OFFLINE")
    cache = tmp_path / "hf"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    calls: list[tuple[str, str, bool]] = []
    real_download = huggingface_hub.hf_hub_download

    def download(repo_id, filename, *, revision=None, cache_dir=None, local_files_only=False):
        calls.append((repo_id, filename, local_files_only))
        assert cache_dir == cache
        if local_files_only:
            return real_download(
                repo_id, filename, revision=revision, cache_dir=cache_dir, local_files_only=True
            )
        if filename != "model.safetensors":
            raise LocalEntryNotFoundError("unexpected")
        return str(write_hf_cache(cache_dir, repo_id, timm_state, filename))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    first = SwinUNet(**swin_kwargs, pretrained=IMAGENET_SWIN_T)
    assert calls == [
        (IMAGENET_SWIN_T, "model.safetensors", True),
        (IMAGENET_SWIN_T, "pytorch_model.bin", True),
        (IMAGENET_SWIN_T, "model.safetensors", False),
    ]
    calls.clear()
    second = SwinUNet(**swin_kwargs, pretrained=IMAGENET_SWIN_T)
    assert calls == [(IMAGENET_SWIN_T, "model.safetensors", True)]
    key = "layers.0.blocks.0.attn.qkv.weight"
    assert torch.equal(first.state_dict()[key], timm_state[key])
    assert torch.equal(second.state_dict()[key], timm_state[key])


def test_which_pretrained_values_are_hub_names(tmp_path, monkeypatch) -> None:
    assert hub_model_id(IMAGENET_SWIN_T) == IMAGENET_SWIN_T
    assert hub_model_id("hf-hub:org/model@v1.0") == "org/model@v1.0"
    assert hub_model_id("org/model@main") == "org/model@main"
    assert hub_model_id("swin_tiny_patch4_window7_224.ms_in1k") == IMAGENET_SWIN_T  # timm tag
    assert hub_model_id("pretrained/swin_tiny_patch4_window7_224.pth") is None
    assert hub_model_id("weights/model.safetensors") is None
    assert hub_model_id(tmp_path / "org" / "model") is None  # a Path is always a file
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "model").write_bytes(b"")
    assert hub_model_id("org/model") is None  # an existing file wins


def test_only_a_swin_t_sized_network_with_random_weights_warns(swin_kwargs) -> None:
    default = SwinUNet()
    message = random_init_warning(default)
    assert message is not None
    assert "starts from random weights" in message and "all-background" in message
    assert f"--model.transformer.init_args.pretrained {IMAGENET_SWIN_T}" in message
    default.weights_source = "some file"
    assert random_init_warning(default) is None
    assert random_init_warning(SwinUNet(**swin_kwargs)) is None  # small custom network
    assert random_init_warning(UNet()) is None


def test_file_without_a_state_dict_is_rejected(tmp_path, swin_kwargs) -> None:
    path = tmp_path / "list.pth"
    torch.save([1, 2], path)
    with pytest.raises(ValueError, match="holds a list, expected a state dict"):
        load_pretrained_swin(SwinUNet(**swin_kwargs), path)


# ----------------------------------------------------------------------------------------------
# Published AdvMIM / SSL4MIS checkpoints. The inverse mapping below is written independently of
# the library's, from the public code's module names.

_CONV_INDEX = {"conv1": "0", "norm1": "1", "conv2": "4", "norm2": "5"}


def _unet_public_key(key: str) -> str:
    rules = [
        (
            r"^in_block\.(\w+)\.(.+)$",
            lambda m: f"encoder.in_conv.conv_conv.{_CONV_INDEX[m[1]]}.{m[2]}",
        ),
        (
            r"^down_blocks\.(\d)\.conv\.(\w+)\.(.+)$",
            lambda m: (
                f"encoder.down{int(m[1]) + 1}.maxpool_conv.1.conv_conv.{_CONV_INDEX[m[2]]}.{m[3]}"
            ),
        ),
        (r"^up_blocks\.(\d)\.up\.(.+)$", lambda m: f"decoder.up{int(m[1]) + 1}.up.{m[2]}"),
        (r"^up_blocks\.(\d)\.proj\.(.+)$", lambda m: f"decoder.up{int(m[1]) + 1}.conv1x1.{m[2]}"),
        (
            r"^up_blocks\.(\d)\.conv\.(\w+)\.(.+)$",
            lambda m: f"decoder.up{int(m[1]) + 1}.conv.conv_conv.{_CONV_INDEX[m[2]]}.{m[3]}",
        ),
        (r"^head\.(.+)$", lambda m: f"decoder.out_conv.{m[1]}"),
        (r"^mask_token$", lambda m: "encoder.mask_token"),
    ]
    for pattern, build in rules:
        match = re.match(pattern, key)
        if match:
            return build(match)
    raise AssertionError(f"no public name for {key}")


def _swin_public_key(key: str) -> str:
    key = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) - 1}.downsample", key)
    key = re.sub(r"^final_expand\.", "up.", key)
    key = re.sub(r"^head\.", "output.", key)
    return f"swin_unet.{key}"


def _randomised(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {
        k: v.clone() if not v.is_floating_point() else torch.randn(v.shape, generator=gen)
        for k, v in net.state_dict().items()
    }


def test_hand_written_public_keys_map_correctly(unet_kwargs, swin_kwargs) -> None:
    unet = UNet(**unet_kwargs, upsampling="transposed")
    swin = SwinUNet(**swin_kwargs)
    expected = {
        "encoder.in_conv.conv_conv.0.weight": "in_block.conv1.weight",
        "encoder.in_conv.conv_conv.1.running_mean": "in_block.norm1.running_mean",
        "encoder.down1.maxpool_conv.1.conv_conv.4.bias": "down_blocks.0.conv.conv2.bias",
        "encoder.down4.maxpool_conv.1.conv_conv.5.num_batches_tracked": (
            "down_blocks.3.conv.norm2.num_batches_tracked"
        ),
        "decoder.up1.up.weight": "up_blocks.0.up.weight",
        "decoder.up2.conv1x1.bias": "up_blocks.1.proj.bias",
        "decoder.up4.conv.conv_conv.0.weight": "up_blocks.3.conv.conv1.weight",
        "decoder.out_conv.weight": "head.weight",
        "encoder.mask_token": "mask_token",
    }
    for public, local in expected.items():
        assert public_key_to_local(public, unet) == local
    expected_swin = {
        "swin_unet.patch_embed.proj.weight": "patch_embed.proj.weight",
        "swin_unet.patch_embed.norm.bias": "patch_embed.norm.bias",
        "swin_unet.mask_token": "mask_token",
        "swin_unet.layers.0.blocks.1.attn.qkv.weight": "layers.0.blocks.1.attn.qkv.weight",
        "swin_unet.layers.0.downsample.reduction.weight": "layers.1.downsample.reduction.weight",
        "swin_unet.layers.2.downsample.norm.bias": "layers.3.downsample.norm.bias",
        "swin_unet.norm.weight": "norm.weight",
        "swin_unet.layers_up.0.expand.weight": "layers_up.0.expand.weight",
        "swin_unet.layers_up.1.blocks.0.mlp.fc1.weight": "layers_up.1.blocks.0.mlp.fc1.weight",
        "swin_unet.layers_up.2.upsample.norm.weight": "layers_up.2.upsample.norm.weight",
        "swin_unet.concat_back_dim.3.bias": "concat_back_dim.3.bias",
        "swin_unet.norm_up.weight": "norm_up.weight",
        "swin_unet.up.expand.weight": "final_expand.expand.weight",
        "swin_unet.output.weight": "head.weight",
    }
    for public, local in expected_swin.items():
        assert public_key_to_local(public, swin) == local
    for ignored in (
        "swin_unet.layers.0.blocks.1.attn_mask",
        "swin_unet.layers.0.blocks.0.attn.relative_position_index",
        "swin_unet.decoder.weight",
        "projection_head.0.weight",
    ):
        assert public_key_to_local(ignored, swin) is None
    assert public_key_to_local("decoder.decoder.weight", unet) is None


@pytest.mark.parametrize("upsampling", ["bilinear", "transposed"])
def test_public_unet_checkpoint_round_trips(tmp_path, unet_kwargs, upsampling) -> None:
    source = UNet(**unet_kwargs, upsampling=upsampling)
    values = _randomised(source)
    public = {f"module.{_unet_public_key(k)}": v for k, v in values.items()}
    public["module.projection_head.0.weight"] = torch.zeros(16, 16)  # MiMUNet extras
    public["module.decoder.decoder.weight"] = torch.zeros(4, 4, 1, 1)
    path = tmp_path / "unet_public.pth"
    torch.save(public, path)

    target = UNet(**unet_kwargs, upsampling=upsampling)
    report = load_public_checkpoint(target, path)
    assert report.format == "public-unet"
    assert report.not_loaded == [] and report.skipped == {}
    assert set(report.unused) == {"projection_head.0.weight", "decoder.decoder.weight"}
    for key, value in target.state_dict().items():
        assert torch.equal(value, values[key]), key


def test_public_swin_checkpoint_round_trips(swin_kwargs) -> None:
    source = SwinUNet(**swin_kwargs)
    values = _randomised(source)
    public = {_swin_public_key(k): v for k, v in values.items()}
    public["swin_unet.layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(4, 4).long()
    public["swin_unet.decoder.weight"] = torch.zeros(12, 12, 1, 1)  # MiM reconstruction head
    public["contrastive_class_selector_0.0.weight"] = torch.zeros(12, 12)

    target = SwinUNet(**swin_kwargs)
    report = load_public_checkpoint(target, public)
    assert report.format == "public-swin-unet" and report.source == "<state dict>"
    assert report.not_loaded == [] and report.skipped == {}
    assert len(report.unused) == 3
    for key, value in target.state_dict().items():
        assert torch.equal(value, values[key]), key


def test_plain_public_model_without_mask_token_loads(unet_kwargs) -> None:
    public = {_unet_public_key(k): v for k, v in _randomised(UNet(**unet_kwargs)).items()}
    del public["encoder.mask_token"]
    report = load_public_checkpoint(UNet(**unet_kwargs), public)
    assert report.not_loaded == ["mask_token"]


def test_mismatches_are_reported_with_hints(unet_kwargs) -> None:
    bilinear = UNet(**unet_kwargs)  # the default: the published decoder
    public = {_unet_public_key(k): v for k, v in _randomised(bilinear).items()}
    public["encoder.extra.weight"] = torch.zeros(1)
    transposed = UNet(**unet_kwargs, upsampling="transposed")
    before = {k: v.clone() for k, v in transposed.state_dict().items()}
    with pytest.raises(ValueError) as info:
        load_public_checkpoint(transposed, public)
    message = str(info.value)
    assert "nothing was loaded" in message
    assert (
        "skipped up_blocks.0.proj.weight: not in the model (from decoder.up1.conv1x1.weight)"
        in (message)
    )
    assert "unused checkpoint key encoder.extra.weight: no counterpart in this model" in message
    assert "model key up_blocks.0.up.weight gets no value" in message
    assert "UNet(upsampling='bilinear')" in message
    assert all(torch.equal(v, before[k]) for k, v in transposed.state_dict().items())

    report = load_public_checkpoint(transposed, public, strict=False)
    assert "up_blocks.0.up.weight" in report.not_loaded
    assert torch.equal(transposed.head.weight, public["decoder.out_conv.weight"])


def test_published_networks_load_strictly_into_the_defaults() -> None:
    for net, public_key in ((UNet(), _unet_public_key), (SwinUNet(), _swin_public_key)):
        values = _randomised(net)
        report = load_public_checkpoint(net, {public_key(k): v for k, v in values.items()})
        assert report.not_loaded == [] and report.skipped == {} and report.unused == {}
        assert all(torch.equal(v, values[k]) for k, v in net.state_dict().items())
        assert net.weights_source == "<state dict>"


def test_shared_mask_token_mismatch_is_explained(swin_kwargs) -> None:
    public = {_swin_public_key(k): v for k, v in _randomised(SwinUNet(**swin_kwargs)).items()}
    with pytest.raises(ValueError, match="mask_token='position'"):
        load_public_checkpoint(SwinUNet(**swin_kwargs, mask_token="shared"), public)


def test_public_checkpoint_errors(tmp_path, unet_kwargs) -> None:
    with pytest.raises(FileNotFoundError, match="public AdvMIM / SSL4MIS checkpoint not found"):
        load_public_checkpoint(UNet(**unet_kwargs), tmp_path / "missing.pth")
    with pytest.raises(TypeError, match="must be a UNet or SwinUNet"):
        load_public_checkpoint(torch.nn.Linear(1, 1), {})
