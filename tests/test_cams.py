"""Native CAM methods against pytorch-grad-cam, and the engine's one-pass contract."""

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
