"""Model specs, checkpoints (safe loading, containers, prefixes), target layers."""

import hashlib
import importlib.util
import re
import textwrap
from collections import OrderedDict

import pytest
import torch
from torch import nn

from camstat import models
from camstat.errors import CamstatError
from camstat.models import (
    LoadedModel,
    build_model,
    candidate_layers,
    get_layer,
    load_checkpoint,
    load_model,
    resolve_layers,
    save_checkpoint,
    sha256_file,
)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _trained_smallcnn(num_classes: int = 4) -> nn.Module:
    torch.manual_seed(1)
    model = build_model("camstat:smallcnn", num_classes)
    # non-default buffers, so a load that skips them would show
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_()
    return model


# --------------------------------------------------------------------------
# architectures


def test_resnet20_has_027m_params_and_parameter_free_option_a_shortcuts():
    model = build_model("camstat:resnet20", 10)
    assert sum(p.numel() for p in model.parameters()) == 269_722
    names = dict(model.named_modules())
    assert {"conv1", "bn1", "layer1", "layer2", "layer3", "linear"} <= set(names)
    assert [len(names[f"layer{k}"]) for k in (1, 2, 3)] == [3, 3, 3]
    assert not any(p for n, p in model.named_parameters() if "shortcut" in n)

    block = names["layer2.0"]
    x = torch.randn(2, 16, 8, 8)
    shortcut = block.shortcut(x)
    assert shortcut.shape == (2, 32, 4, 4)
    assert torch.equal(shortcut[:, 8:24], x[:, :, ::2, ::2])  # strided identity, centred
    assert shortcut[:, :8].abs().sum() == 0 and shortcut[:, 24:].abs().sum() == 0
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("size", [32, 48])
def test_smallcnn_is_small_and_works_at_other_sizes(size):
    model = build_model("camstat:smallcnn", 5).eval()
    assert sum(p.numel() for p in model.parameters()) < 30_000
    assert model(torch.randn(2, 3, size, size)).shape == (2, 5)


def test_torchvision_model_built_without_download():
    model = build_model("torchvision:resnet18", 3).eval()
    assert model.fc.out_features == 3
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("torchvision:resnet1234", "unknown torchvision model"),
        ("camstat:vgg", "resnet20, smallcnn"),
        ("resnet18", "torchvision:NAME"),
        ("foo bar:baz", "unknown model spec"),
    ],
)
def test_unknown_models_list_the_choices(spec, expected):
    with pytest.raises(CamstatError, match=expected):
        build_model(spec, 10)


def test_timm_without_timm_says_install_timm(monkeypatch):
    real = importlib.util.find_spec

    def hide_timm(name, *args):
        return None if name == "timm" else real(name, *args)

    monkeypatch.setattr(models.importlib.util, "find_spec", hide_timm)
    with pytest.raises(CamstatError, match="install timm"):
        build_model("timm:resnet18", 10)


USER_CODE = textwrap.dedent(
    """
    from torch import nn

    class Net(nn.Module):
        def __init__(self, num_classes=7):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
            self.head = nn.Linear(4, num_classes)

        def forward(self, x):
            return self.head(self.body(x).mean((2, 3)))

    def with_classes(num_classes=7):
        return Net(num_classes)

    def without_classes():
        return Net(7)

    def not_a_model():
        return 42
    """
)


def test_file_factory_gets_num_classes_only_when_it_accepts_it(tmp_path):
    path = tmp_path / "arch.py"
    path.write_text(USER_CODE)
    assert build_model(f"{path}:with_classes", 3).head.out_features == 3
    assert build_model(f"{path}:without_classes", 3).head.out_features == 7
    assert build_model(f"{path}:Net", 2).head.out_features == 2  # a class is a factory too
    with pytest.raises(CamstatError, match="no factory 'missing'.*with_classes"):
        build_model(f"{path}:missing", 3)
    with pytest.raises(CamstatError, match="not a torch.nn.Module"):
        build_model(f"{path}:not_a_model", 3)
    with pytest.raises(CamstatError, match="not found"):
        build_model(f"{tmp_path / 'nope.py'}:with_classes", 3)


def test_module_factory_imports_from_the_working_directory(tmp_path, monkeypatch):
    package = tmp_path / "camstat_test_userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(USER_CODE)
    monkeypatch.chdir(tmp_path)
    model = build_model("camstat_test_userpkg.nets:with_classes", 5)
    assert model.head.out_features == 5
    with pytest.raises(CamstatError, match="cannot import module"):
        build_model("camstat_test_no_such_pkg.nets:with_classes", 5)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
def test_torchscript_model_loads_but_has_no_hookable_layers(tmp_path):
    source = _trained_smallcnn(4).eval()
    path = tmp_path / "model.ts"
    torch.jit.trace(source, torch.randn(1, 3, 32, 32)).save(str(path))
    loaded = load_model(f"torchscript:{path}")
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(loaded.module(x), source(x), atol=1e-5)
    assert loaded.num_classes == 4
    with pytest.raises(CamstatError, match="TorchScript"):
        candidate_layers(loaded.module)


# --------------------------------------------------------------------------
# checkpoints


@pytest.mark.parametrize("container", [None, "state_dict", "model", "model_state_dict", "net"])
@pytest.mark.parametrize("prefix", ["", "module.", "model."])
def test_checkpoint_containers_and_prefixes(tmp_path, container, prefix):
    source = _trained_smallcnn(4)
    state = {prefix + k: v for k, v in source.state_dict().items()}
    path = tmp_path / "ckpt.pt"
    torch.save(state if container is None else {container: state, "epoch": 3}, path)

    loaded = load_model("camstat:smallcnn", checkpoint=path)
    assert isinstance(loaded, LoadedModel)
    assert _same_weights(loaded.module, source)
    assert loaded.num_classes == 4  # inferred from the head
    assert not loaded.module.training
    assert loaded.checkpoint == str(path)
    assert loaded.checkpoint_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.meta == {}


def test_prefix_kept_when_not_on_every_key(tmp_path):
    state = {"model.weight": torch.zeros(2), "head.weight": torch.zeros(2, 2)}
    torch.save(state, tmp_path / "c.pt")
    assert set(load_checkpoint(tmp_path / "c.pt")[0]) == set(state)


def test_save_checkpoint_roundtrip_atomic_and_weights_only(tmp_path):
    source = _trained_smallcnn(4)
    meta = {
        "model": "camstat:smallcnn",
        "num_classes": 4,
        "classes": ["a", "b", "c", "d"],
        "normalize": [[0.5, 0.5, 0.5], [0.25, 0.25, 0.25]],
        "size": [32, 32],
        "epoch": 2,
    }
    path = tmp_path / "run" / "model.pt"
    digest = save_checkpoint(path, source, meta)
    assert digest == sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp file left
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw) == {"state_dict", "camstat"}

    loaded = load_model(None, checkpoint=path)  # spec and classes from the metadata
    assert loaded.spec == "camstat:smallcnn" and loaded.num_classes == 4
    assert loaded.meta == meta
    assert _same_weights(loaded.module, source)
    with pytest.raises(TypeError, match="meta.when"):
        save_checkpoint(tmp_path / "x.pt", source, {"when": object()})


def test_safetensors_with_and_without_camstat_metadata(tmp_path):
    from safetensors.torch import save_file

    source = _trained_smallcnn(3)
    meta = {"model": "camstat:smallcnn", "num_classes": 3, "classes": ["x", "y", "z"]}
    path = tmp_path / "w.safetensors"
    save_checkpoint(path, source, meta)
    state, read_meta = load_checkpoint(path)
    assert read_meta == meta
    assert _same_weights(load_model("camstat:smallcnn", checkpoint=path).module, source)

    plain = tmp_path / "plain.safetensors"
    save_file({"module." + k: v.contiguous() for k, v in source.state_dict().items()}, str(plain))
    state, read_meta = load_checkpoint(plain)
    assert read_meta == {} and "fc.weight" in state


def test_strict_mismatch_names_missing_and_unexpected_keys(tmp_path):
    path = tmp_path / "small.pt"
    torch.save(_trained_smallcnn(10).state_dict(), path)
    with pytest.raises(CamstatError) as info:
        load_model("camstat:resnet20", num_classes=10, checkpoint=path)
    message = str(info.value)
    assert "missing keys" in message and "unexpected keys" in message
    assert "conv1.weight" in message and "features.stage1.0.weight" in message
    assert "--model" in message and "--num-classes" in message
    assert "\n" not in message

    with pytest.raises(CamstatError, match=r"shape mismatch.*fc.weight.*\[10, 64\].*\[5, 64\]"):
        load_model("camstat:smallcnn", num_classes=5, checkpoint=path)


def test_malicious_pickle_is_refused_and_never_executed(tmp_path):
    target = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(target), "w"))

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _trained_smallcnn(2).state_dict(), "payload": Evil()}, path)
    with pytest.raises(CamstatError, match="--trust-checkpoint"):
        load_model("camstat:smallcnn", checkpoint=path)
    assert not target.exists()


def test_whole_pickled_model_needs_trust(tmp_path):
    source = _trained_smallcnn(3)
    path = tmp_path / "whole.pt"
    torch.save(source, path)
    with pytest.raises(CamstatError, match="--trust-checkpoint"):
        load_checkpoint(path)
    loaded = load_model("camstat:smallcnn", checkpoint=path, trust_checkpoint=True)
    assert _same_weights(loaded.module, source)


def test_unreadable_checkpoints(tmp_path):
    with pytest.raises(CamstatError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CamstatError, match="garbage.pt"):
        load_checkpoint(garbage)
    torch.save({"optimizer": {"lr": 0.1}}, tmp_path / "opt.pt")
    with pytest.raises(CamstatError, match="no state_dict found"):
        load_checkpoint(tmp_path / "opt.pt")


def test_num_classes_resolution(tmp_path):
    with pytest.raises(CamstatError, match="--num-classes"):
        load_model("camstat:resnet20")
    assert load_model("camstat:resnet20", num_classes=7).num_classes == 7
    path = tmp_path / "m.pt"
    save_checkpoint(path, _trained_smallcnn(6), {"num_classes": 6})
    assert load_model("camstat:smallcnn", checkpoint=path).num_classes == 6


# --------------------------------------------------------------------------
# layers


def test_candidate_layers_in_forward_order_with_shapes():
    layers = candidate_layers(build_model("camstat:smallcnn", 3), (32, 32))
    shapes = {info.name: info.out_shape for info in layers}
    names = [info.name for info in layers]
    assert names[0] == "features.stage1.0" and layers[0].type == "Conv2d"
    assert shapes["features.stage1"] == (16, 16, 16)
    assert shapes["features.stage3"] == shapes["features"] == (64, 8, 8)
    assert names.index("features.stage2") < names.index("features.stage3") < names.index("features")
    assert "fc" not in shapes  # 2-D output

    resnet = {i.name: i.out_shape for i in candidate_layers(build_model("camstat:resnet20", 10), (32, 32))}
    assert [resnet[f"layer{k}"] for k in (1, 2, 3)] == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]


@pytest.mark.parametrize(
    "spec, size, expected",
    [
        ("camstat:resnet20", (32, 32), "layer3"),
        ("camstat:smallcnn", (32, 32), "features"),
        ("torchvision:resnet18", (64, 64), "layer4"),
        ("torchvision:mobilenet_v3_small", (64, 64), "features"),
    ],
)
def test_auto_layer_is_the_last_spatial_stage(spec, size, expected):
    assert resolve_layers(build_model(spec, 4), "auto", size) == [expected]


def test_auto_layer_passes_over_a_spatial_pooling_head():
    # like VGG: an adaptive pool that keeps a 4x4 map is not a stage
    model = nn.Sequential()
    model.add_module("features", nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()))
    model.add_module("avgpool", nn.AdaptiveAvgPool2d(4))
    model.add_module("flatten", nn.Flatten())
    model.add_module("classifier", nn.Linear(64, 2))
    assert resolve_layers(model, "auto", (32, 32)) == ["features"]


def test_resolve_named_layers_and_errors():
    model = build_model("camstat:resnet20", 10)
    assert resolve_layers(model, "layer2, layer3,layer2", (32, 32)) == ["layer2", "layer3"]
    with pytest.raises(CamstatError, match="unknown layer layer9; candidates: .*layer3"):
        resolve_layers(model, "layer9", (32, 32))
    with pytest.raises(CamstatError, match="linear gives no feature map"):
        resolve_layers(model, "linear", (32, 32))
    assert get_layer(model, "layer3.2") is model.layer3[2]
    with pytest.raises(CamstatError, match="no layer 'layer9'"):
        get_layer(model, "layer9")


def test_candidate_layers_restores_training_mode():
    model = build_model("camstat:smallcnn", 3).train()
    candidate_layers(model)
    assert model.training


# --------------------------------------------------------------------------
# checkpoint prefixes (torch.compile, a sub-module, Lightning with extra keys)


@pytest.mark.parametrize(
    "make_state",
    [
        lambda sd: {"_orig_mod." + k: v for k, v in sd.items()},  # torch.compile
        lambda sd: {"net." + k: v for k, v in sd.items()},
        lambda sd: {**{"model." + k: v for k, v in sd.items()}, "criterion.weight": torch.ones(4)},  # Lightning
        lambda sd: {"module._orig_mod." + k: v for k, v in sd.items()},
    ],
    ids=["orig_mod", "net", "lightning", "ddp+compile"],
)
def test_checkpoint_prefixes_resolve(tmp_path, make_state):
    source = _trained_smallcnn(4)
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": make_state(source.state_dict())}, path)
    assert _same_weights(load_model("camstat:smallcnn", num_classes=4, checkpoint=path).module, source)


def test_checkpoint_prefix_named_explicitly_and_hinted(tmp_path):
    source = _trained_smallcnn(4)
    state = {"model." + k: v for k, v in source.state_dict().items()}
    state.update({"ema." + k: v + 1 for k, v in source.state_dict().items()})  # two copies: no automatic choice
    path = tmp_path / "two.pt"
    torch.save(state, path)
    with pytest.raises(CamstatError, match=r"several prefixes \(ema., model.\).*--checkpoint-prefix"):
        load_model("camstat:smallcnn", num_classes=4, checkpoint=path)
    explicit = load_model("camstat:smallcnn", num_classes=4, checkpoint=path, checkpoint_prefix="model")
    assert _same_weights(explicit.module, source)
    ema = load_model("camstat:smallcnn", num_classes=4, checkpoint=path, checkpoint_prefix="ema.")
    assert not _same_weights(ema.module, source)
    with pytest.raises(CamstatError, match="no checkpoint key starts with 'nope.'.*model."):
        load_model("camstat:smallcnn", num_classes=4, checkpoint=path, checkpoint_prefix="nope")

    # one key short: nothing fits, and the hint names the prefix that nearly does
    partial = {k: v for k, v in state.items() if k.startswith("model.") and k != "model.fc.bias"}
    torch.save(partial, path)
    with pytest.raises(CamstatError, match="missing keys.*under 'model.' fit this model best: pass --checkpoint-prefix model,"):
        load_model("camstat:smallcnn", num_classes=4, checkpoint=path)


def test_submodule_named_model_is_not_stripped(tmp_path):
    # a wrapper whose only child is called "model": its own keys fit as they are
    wrapper = nn.Sequential(OrderedDict(model=build_model("camstat:smallcnn", 3)))
    path = tmp_path / "w.pt"
    torch.save(wrapper.state_dict(), path)
    target = nn.Sequential(OrderedDict(model=build_model("camstat:smallcnn", 3)))
    state, _ = load_checkpoint(path)
    models.load_state_strict(target, models.fit_prefix(state, set(target.state_dict())), "x")
    assert _same_weights(target, wrapper)


# --------------------------------------------------------------------------
# transformer layers: readings, auto, refusals


class TinyViT(nn.Module):
    """A ViT in miniature: patch embedding, a class token (and ``extra`` more prefix
    tokens), pre-norm blocks with real attention, the class token read by the head."""

    def __init__(self, num_classes=3, dim=16, patch=4, image=16, depth=2, extra=0, declare=True):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.prefix = nn.Parameter(torch.randn(1, 1 + extra, dim) * 0.1)
        self.pos = nn.Parameter(torch.randn(1, 1 + extra + (image // patch) ** 2, dim) * 0.1)
        self.blocks = nn.Sequential(*[TinyBlock(dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        if declare:
            self.num_prefix_tokens = 1 + extra

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.prefix.expand(len(x), -1, -1), x], dim=1) + self.pos
        return self.head(self.norm(self.blocks(x))[:, 0])


class TinyAttention(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.proj(torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1) @ v)


class TinyBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), TinyAttention(dim)
        self.norm2, self.mlp = nn.LayerNorm(dim), nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinySwin(nn.Module):
    """Swin/ConvNeXt-style: stages computed channels last (B, H, W, C), a final norm, a permute, pooling."""

    def __init__(self, num_classes=3, dim=8):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, stride=4)
        self.stages = nn.Sequential(TinyMixer(dim), TinyMerge(dim), TinyMixer(2 * dim))
        self.norm = nn.LayerNorm(2 * dim)
        self.head = nn.Linear(2 * dim, num_classes)

    def forward(self, x):
        x = self.norm(self.stages(self.embed(x).permute(0, 2, 3, 1)))
        return self.head(x.permute(0, 3, 1, 2).mean((2, 3)))


class TinyMixer(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm, self.fc1, self.act, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)

    def forward(self, x):
        shifted = torch.roll(x, shifts=(1, 1), dims=(1, 2))  # a little spatial mixing
        return x + self.fc2(self.act(self.fc1(self.norm(x + shifted))))


class TinyMerge(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm, self.reduction = nn.LayerNorm(4 * dim), nn.Linear(4 * dim, 2 * dim)

    def forward(self, x):
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


def test_grid_readings_tokens_channels_last_and_non_grids():
    from camstat.grids import grid_layout

    assert grid_layout((197, 768), (224, 224)).shape == (768, 14, 14)
    assert grid_layout((197, 768), (224, 224)).prefix == 1  # the class token
    assert grid_layout((198, 192), (224, 224)).prefix == 2  # class + distillation
    assert grid_layout((201, 384), (224, 224), prefix=5).prefix == 5  # registers, declared
    assert grid_layout((141, 8), (224, 160)).shape == (8, 14, 10)  # 1 + 14x10 for a non-square image
    assert grid_layout((56, 56, 96), (224, 224)).kind == "hwc"  # Swin stage 1
    assert grid_layout((112, 112, 96), (448, 448)).kind == "hwc"  # (112, 96) would also be a grid, but a worse one
    assert grid_layout((96, 56, 56), (224, 224)).kind == "chw"
    assert grid_layout((64, 8, 8), (32, 32)).kind == "chw"
    assert grid_layout((3, 197, 64), (224, 224)) is None  # per-head queries/keys
    assert grid_layout((197, 197), (224, 224)).prefix == 1  # attention rows read as tokens; auto never picks them
    assert grid_layout((10,), (32, 32)) is None


@pytest.mark.parametrize(
    "factory, size, expected, kind",
    [
        (lambda: TinyViT(), 16, "blocks.1.norm1", "tokens"),  # the last block's first norm
        (lambda: TinyViT(extra=4, declare=False), 16, "blocks.1.norm1", "tokens"),
        (lambda: TinySwin(), 32, "stages", "hwc"),  # the last stage, not the final norm
    ],
)
def test_auto_layer_of_transformers(factory, size, expected, kind):
    torch.manual_seed(0)
    (info,) = models.resolve_layer_maps(factory(), "auto", (size, size))
    assert (info.name, info.layout.kind) == (expected, kind)


def test_token_layer_shapes_and_prefix_from_one_trace():
    (info,) = models.resolve_layer_maps(TinyViT(extra=4, declare=False), "blocks.0", (16, 16))
    assert info.out_shape == (16, 4, 4) and info.layout.prefix == 5
    names = [i.name for i in candidate_layers(TinyViT(), (16, 16))]
    assert "blocks.1.norm1" in names and "blocks.1" not in names and "patch_embed" in names


@pytest.mark.parametrize(
    "model, size, layer, message",
    [
        (lambda: TinyViT(), 16, "blocks.1", "no gradient.*class token"),
        (lambda: TinyViT(), 16, "norm", "no gradient.*transformer"),
        (lambda: TinySwin(), 8, "stages", "1x1 map"),
        (lambda: build_model("torchvision:resnet18", 3), 32, "layer4", "1x1 map at a 32x32 input"),
        (lambda: build_model("torchvision:resnet18", 3), 64, "layer4.0.relu", "called 2 times"),
    ],
)
def test_layers_that_are_no_image_grid_are_refused(model, size, layer, message):
    torch.manual_seed(0)
    with pytest.raises(CamstatError, match=message):
        resolve_layers(model(), layer, (size, size))


def test_attention_scores_are_no_grid():
    class Scores(nn.Module):  # an attention-score layer: (heads, T, T), no image grid
        def forward(self, x):
            return x[:, None] @ x[:, None].transpose(-1, -2)

    vit = TinyViT()
    vit.blocks[1].attn.scores = Scores()
    vit.blocks[1].attn.forward = lambda x: vit.blocks[1].attn.proj(vit.blocks[1].attn.scores(x)[:, 0] @ x)
    with pytest.raises(CamstatError, match="not an image grid.*transformer tokens"):
        resolve_layers(vit, "blocks.1.attn.scores", (16, 16))


@pytest.mark.parametrize(
    "spec, size, expected",
    [
        ("torchvision:convnext_tiny", 32, "features.5"),  # not the LayerNorm inside the 1x1 downsample
        ("torchvision:efficientnet_b0", 32, "features.5"),  # not a BatchNorm inside a strided block
        ("torchvision:vgg11", 32, "features.19"),  # VGG's last ReLU before its pooling
        ("torchvision:resnet18", 32, "layer3"),
    ],
)
def test_auto_layer_never_an_intermediate_of_a_resampling_module(spec, size, expected):
    assert resolve_layers(build_model(spec, 4), "auto", (size, size)) == [expected]


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm not installed")
@pytest.mark.parametrize(
    "name, kwargs, size, expected",
    [
        ("vit_tiny_patch16_224", {"img_size": 32}, 32, "blocks.11.norm1"),
        ("deit_tiny_distilled_patch16_224", {"img_size": 32}, 32, "blocks.11.norm1"),
        ("swin_tiny_patch4_window7_224", {"img_size": 64, "window_size": 2}, 64, "layers"),
        ("convnext_atto", {}, 32, "stages.2"),
        ("efficientnet_b0", {}, 32, "blocks.4"),
    ],
)
def test_timm_auto_layers(name, kwargs, size, expected):
    import timm as timm_lib

    model = timm_lib.create_model(name, pretrained=False, num_classes=3, **kwargs)
    (info,) = models.resolve_layer_maps(model, "auto", (size, size))
    assert info.name == expected
    assert min(info.out_shape[1:]) > 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "torchvision:resnet18", "--num-classes", "10", "--layer", "layer4"], "1x1 map"),
        (["--model", "tests.test_models:TinyViT", "--num-classes", "10", "--size", "16", "--layer", "blocks.1"],
         "no gradient.*transformer"),
        (["--model", "tests.test_models:TinyViT", "--num-classes", "10", "--size", "16", "--layer", "blocks.1.attn.qkv"],
         None),
    ],
    ids=["1x1", "vit-after-class-token", "vit-tokens-ok"],
)
def test_cli_refuses_layers_that_are_no_image_grid(tmp_path, capsys, args, message):
    from camstat.cli import main

    store = tmp_path / "s.zarr"
    code = main(["extract", *args, "--data", "builtin:digits", "--limit", "4", "--store", str(store),
                 "--device", "cpu", "--methods", "gradcam"])
    err = capsys.readouterr().err
    if message is None:
        assert code == 0, err
        return
    assert code == 2 and "Traceback" not in err
    assert re.search(message, " ".join(err.split())), err
    assert not store.exists()  # refused before anything is written


def test_layers_command_uses_the_data_size_like_extract(tmp_path):
    import json

    from camstat.cli import main

    out = tmp_path / "layers.json"
    # digits are 32x32: resnet18's layer4 is 1x1 there, so auto is layer3 -- as extract would choose
    assert main(["layers", "--model", "torchvision:resnet18", "--data", "builtin:digits", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["input_size"] == [32, 32] and result["auto"] == ["layer3"]
    assert "layer4" not in [layer["name"] for layer in result["layers"]]


def test_layer_names_and_shapes_come_from_one_forward():
    model = build_model("camstat:resnet20", 10)
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    infos = models.resolve_layer_maps(model, "layer2,layer3", (32, 32))
    assert len(calls) == 1
    assert [(i.name, i.out_shape) for i in infos] == [("layer2", (32, 16, 16)), ("layer3", (64, 8, 8))]
