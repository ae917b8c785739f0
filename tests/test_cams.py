"""Native CAM methods against pytorch-grad-cam, and the engine's one-pass contract."""

import importlib.util

import numpy as np
import pytest
import torch
import torchvision
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from camstat.cams import CamEngine, differentiable_cams, parse_methods, parse_targets, scale_maps
from camstat.errors import CamstatError

REFERENCE = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "xgradcam": XGradCAM,
             "hirescam": HiResCAM, "layercam": LayerCAM}


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    for m in model.modules():  # non-trivial BN statistics so maps differ between images
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("method", sorted(REFERENCE))
def test_native_equals_pytorch_grad_cam(resnet, method):
    x = torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with CamEngine(resnet, ["layer4", "layer3"], list(REFERENCE)) as engine:
        out = engine(x, torch.zeros(6, dtype=torch.long), ["pred"])
    pred = out.logits.argmax(1)
    modules = dict(resnet.named_modules())
    for layer in ("layer4", "layer3"):
        ref = REFERENCE[method](model=resnet, target_layers=[modules[layer]])(
            x, [ClassifierOutputTarget(int(p)) for p in pred])
        ours = scale_maps(out.maps[(method, layer, "pred")], (64, 64))
        assert ours.shape == ref.shape
        assert np.abs(ours - ref).max() <= 1e-4


def test_true_target_explains_the_label(resnet):
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1, 2, 3])
    with CamEngine(resnet, ["layer4"], ["gradcam"]) as engine:
        out = engine(x, labels, ["pred", "true"])
    ref = GradCAM(model=resnet, target_layers=[resnet.layer4])(x, [ClassifierOutputTarget(int(c)) for c in labels])
    assert np.abs(scale_maps(out.maps[("gradcam", "layer4", "true")], (32, 32)) - ref).max() <= 1e-4
    assert set(out.maps) == {("gradcam", "layer4", "pred"), ("gradcam", "layer4", "true")}


@pytest.mark.parametrize("frozen", [True, False])
def test_backward_stops_at_the_target_layer(resnet, frozen):
    """No gradient reaches the parameters or the input; nothing before the layer is differentiated."""
    resnet.zero_grad(set_to_none=True)
    resnet.requires_grad_(not frozen)
    calls = []
    hook = resnet.layer3.register_full_backward_hook(lambda *a: calls.append(1))
    x = torch.randn(2, 3, 32, 32)
    try:
        with CamEngine(resnet, ["layer4"], ["gradcam"]) as engine:
            engine(x, torch.zeros(2, dtype=torch.long))
    finally:
        hook.remove()
        resnet.requires_grad_(True)
    assert not calls
    assert all(p.grad is None for p in resnet.parameters())
    assert x.grad is None


def test_engine_removes_its_hooks(resnet):
    before = len(resnet.layer4._forward_hooks)
    with CamEngine(resnet, ["layer4"], ["gradcam"]):
        assert len(resnet.layer4._forward_hooks) == before + 1
    assert len(resnet.layer4._forward_hooks) == before


def test_library_method_by_name(resnet):
    x = torch.randn(2, 3, 32, 32)
    with CamEngine(resnet, ["layer4"], ["eigencam"]) as engine:
        out = engine(x, torch.zeros(2, dtype=torch.long))
    maps = out.maps[("eigencam", "layer4", "pred")]
    assert maps.shape == (2, 1, 1) and torch.all(maps >= 0)


def test_differentiable_cam_matches_engine_and_carries_gradients(resnet):
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    for method in ("gradcam", "gradcam++"):
        with CamEngine(resnet, ["layer4"], [method]) as engine:
            ref = engine(x, torch.zeros(3, dtype=torch.long)).maps[(method, "layer4", "pred")]
        acts = {}
        h = resnet.layer4.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o))
        logits = resnet(x)
        h.remove()
        scores = logits.gather(1, logits.argmax(1, keepdim=True))[:, 0]
        cams = differentiable_cams(acts["a"], scores, method)
        assert torch.allclose(cams.detach(), ref, atol=1e-5)
        resnet.zero_grad()
        cams.sum().backward()
        grad = resnet.fc.weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_scale_maps_modes():
    raw = np.zeros((3, 4, 4), np.float32)
    raw[0, 1, 1] = 2.0
    raw[1] = 5.0  # constant map
    mm = scale_maps(raw, (8, 8), "minmax")
    assert mm.shape == (3, 8, 8) and mm.min() >= 0 and mm[0].max() == pytest.approx(1.0, abs=1e-6)
    assert np.all(mm[1] == 0) and np.all(mm[2] == 0)
    s = scale_maps(raw, None, "sum")
    assert np.allclose(s.reshape(3, -1).sum(1), 1.0)
    assert np.allclose(s[2], 1 / 16)  # all-zero map becomes uniform
    assert np.allclose(scale_maps(raw, None, "none"), raw)
    with pytest.raises(CamstatError):
        scale_maps(raw, None, "bogus")


def test_parsers():
    assert parse_methods("GradCAM, gradcam++,gradcam") == ["gradcam", "gradcam++"]
    assert parse_targets("both") == ["pred", "true"]
    with pytest.raises(CamstatError, match="unknown CAM method"):
        parse_methods("gradcam,nope")
    with pytest.raises(CamstatError, match="--target"):
        parse_targets("label")


# --------------------------------------------------------------------------
# transformers: maps equal pytorch-grad-cam's with its reshape_transform

from tests.test_models import TinySwin, TinyViT  # noqa: E402


def _vit_reshape(prefix, h, w):
    def reshape(t):  # pytorch-grad-cam's ViT recipe (tutorials/vision_transformers.md)
        return t[:, prefix:, :].reshape(t.size(0), h, w, t.size(2)).permute(0, 3, 1, 2)

    return reshape


def _hwc_reshape(t):  # its Swin recipe for channels-last stages
    return t.permute(0, 3, 1, 2)


def _compare_with_library(model, layer, reshape, size, methods=("gradcam", "gradcam++", "layercam")):
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(4))
    module = dict(model.named_modules())[layer]
    with CamEngine(model, [layer], list(methods)) as engine:
        out = engine(x, torch.zeros(2, dtype=torch.long), ["pred"])
    targets = [ClassifierOutputTarget(int(p)) for p in out.logits.argmax(1)]
    for method in methods:
        ref = REFERENCE[method](model=model, target_layers=[module], reshape_transform=reshape)(x, targets)
        ours = scale_maps(out.maps[(method, layer, "pred")], (size, size))
        assert ours.shape == ref.shape
        assert np.abs(ours - ref).max() <= 1e-4, method
        assert ref.max() > 0.5  # not a trivially equal pair of empty maps


@pytest.mark.parametrize("extra", [0, 4])
def test_tiny_vit_maps_equal_pytorch_grad_cam(extra):
    torch.manual_seed(0)
    model = TinyViT(extra=extra).eval()
    _compare_with_library(model, "blocks.1.norm1", _vit_reshape(1 + extra, 4, 4), 16)


def test_tiny_swin_maps_equal_pytorch_grad_cam():
    torch.manual_seed(0)
    _compare_with_library(TinySwin().eval(), "stages", _hwc_reshape, 32)


@pytest.mark.slow
def test_torchvision_vit_b_16_maps_equal_pytorch_grad_cam():
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(num_classes=4, image_size=64).eval()
    torch.nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zero-initialises the head
    layer = "encoder.layers.encoder_layer_11.ln_1"
    from camstat.models import resolve_layers

    assert resolve_layers(model, "auto", (64, 64)) == [layer]
    _compare_with_library(model, layer, _vit_reshape(1, 4, 4), 64, methods=("gradcam",))


def test_torchvision_swin_t_maps_equal_pytorch_grad_cam():
    torch.manual_seed(0)
    model = torchvision.models.swin_t(num_classes=4).eval()
    from camstat.models import resolve_layers

    assert resolve_layers(model, "auto", (64, 64)) == ["features"]
    _compare_with_library(model, "features", _hwc_reshape, 64, methods=("gradcam",))


# --------------------------------------------------------------------------
# library methods, shapleycam, randomcam


@pytest.mark.parametrize("method, cls", [("eigencam", "EigenCAM"), ("scorecam", "ScoreCAM")])
def test_library_methods_equal_pytorch_grad_cam_on_a_spatial_layer(method, cls):
    import pytorch_grad_cam

    from camstat.models import build_model

    torch.manual_seed(0)
    model = build_model("camstat:smallcnn", 4).eval()  # 32 channels: ScoreCAM runs one forward per channel
    layer = model.features.stage2
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with CamEngine(model, ["features.stage2"], [method]) as engine:  # 8x8 at 32 px
        out = engine(x, torch.zeros(2, dtype=torch.long))
    raw = out.maps[(method, "features.stage2", "pred")]
    assert raw.shape == (2, 8, 8)
    targets = [ClassifierOutputTarget(int(p)) for p in out.logits.argmax(1)]
    ref = getattr(pytorch_grad_cam, cls)(model=model, target_layers=[layer])(x, targets)
    assert np.abs(scale_maps(raw, (32, 32)) - ref).max() <= 1e-4
    assert ref.std() > 0.05  # a map with structure, so a swap of activations and gradients shows


def test_shapleycam_equals_pytorch_grad_cam_and_is_second_order():
    from pytorch_grad_cam import ShapleyCAM

    torch.manual_seed(0)
    # a curved head (GELU, Softplus), so the Hessian term is not zero
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.GELU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.Softplus(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(8, 3),
    ).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    with CamEngine(model, ["1"], ["shapleycam", "gradcam"]) as engine:
        out = engine(x, torch.zeros(2, dtype=torch.long))
    targets = [ClassifierOutputTarget(int(p)) for p in out.logits.argmax(1)]
    ref = ShapleyCAM(model=model, target_layers=[model[1]])(x, targets)
    ours = scale_maps(out.maps[("shapleycam", "1", "pred")], (16, 16))
    assert np.abs(ours - ref).max() <= 1e-4
    assert not torch.allclose(out.maps[("shapleycam", "1", "pred")], out.maps[("gradcam", "1", "pred")])


def test_randomcam_is_seeded_per_image_and_independent_of_batching(resnet):
    from camstat.cams import image_keys, random_cam

    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    labels = torch.zeros(4, dtype=torch.long)

    def maps(images, seed):
        with CamEngine(resnet, ["layer3"], ["randomcam"], seed=seed) as engine:
            return engine(images, labels[: len(images)]).maps[("randomcam", "layer3", "pred")]

    whole = maps(x, 3)
    np.random.seed(123)  # the global RNG plays no part
    assert torch.equal(maps(x, 3), whole)
    assert torch.equal(torch.cat([maps(x[:1], 3), maps(x[1:], 3)]), whole)
    assert not torch.equal(maps(x, 4), whole)
    # the formula: ReLU(sum_k w_k A_k), w ~ U(-1, 1) from the image's generator
    acts = {}
    h = resnet.layer3.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o.detach()))
    resnet(x)
    h.remove()
    w = np.random.default_rng([3, image_keys(x[:1])[0]]).uniform(-1, 1, acts["a"].shape[1])
    expected = torch.relu((torch.as_tensor(w, dtype=torch.float32)[:, None, None] * acts["a"][0]).sum(0))
    assert torch.allclose(whole[0], expected, atol=1e-5)
    assert torch.allclose(random_cam(acts["a"], image_keys(x), 3), whole, atol=1e-6)


def test_every_offered_method_runs(resnet):
    from camstat.cams import available_methods

    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(8))
    methods = [m for m in available_methods() if m not in ("scorecam", "ablationcam")]  # slow; tested above
    with CamEngine(resnet, ["layer3"], methods) as engine:
        out = engine(x, torch.zeros(2, dtype=torch.long), ["pred", "true"])
    for m in methods:
        for t in ("pred", "true"):
            maps = out.maps[(m, "layer3", t)]
            assert maps.shape == (2, 4, 4) and torch.isfinite(maps).all() and (maps >= 0).all(), m


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm not installed")
def test_timm_vit_all_gradient_methods_incl_shapleycam_through_fused_attention():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    layer = "blocks.11.norm1"
    with CamEngine(model, [layer], ["gradcam", "shapleycam"]) as engine:
        out = engine(x, torch.zeros(2, dtype=torch.long))
    targets = [ClassifierOutputTarget(int(p)) for p in out.logits.argmax(1)]
    ref = GradCAM(model=model, target_layers=[model.blocks[11].norm1], reshape_transform=_vit_reshape(1, 2, 2))(x, targets)
    assert np.abs(scale_maps(out.maps[("gradcam", layer, "pred")], (32, 32)) - ref).max() <= 1e-4
    assert out.maps[("shapleycam", layer, "pred")].shape == (2, 2, 2)


def test_randomcam_stores_are_reproducible(tmp_path):
    from camstat.extract import extract
    from camstat.store import Store

    def run(name, batch_size, seed=0):
        store = tmp_path / name
        extract("camstat:smallcnn", "builtin:digits", store, methods="randomcam", limit=6, batch_size=batch_size,
                chunk=3, device="cpu", seed=seed)
        return Store(store).raw_maps("randomcam", "features", "pred")

    first = run("a.zarr", 3)
    assert np.array_equal(run("b.zarr", 3), first)  # bitwise: what resume relies on
    # another batching draws the same weights; only the convolutions' rounding differs
    assert np.allclose(run("c.zarr", 1), first, atol=1e-5) and first.max() > 0
