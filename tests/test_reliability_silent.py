"""Results that were silently wrong: each is now the model's result, or an error or a warning
that says why not. A layer called at two sites with a BatchNorm after each; a model changed
after compile in ways PyTorch's version counters do not see; hooks on the model itself; images
deeper than 8 bits."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import lrpfx
from lrpfx.errors import StaleExplainerError
from lrpfx.images import load_image, preprocess


# -- BatchNorm folding is per call site ------------------------------------------------------------
class TwoSites(nn.Module):
    """One conv called on two paths, each followed by its own BatchNorm (or by the same one)."""

    def __init__(self, shared_bn: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn1, self.bn2 = nn.BatchNorm2d(4), nn.BatchNorm2d(4)
        self.shared_bn = shared_bn
        self.fc = nn.Linear(2 * 4 * 6 * 6, 3)

    def forward(self, x):
        a = self.bn1(self.conv(x))
        b = (self.bn1 if self.shared_bn else self.bn2)(self.conv(x * 0.5))
        return self.fc(torch.cat([a, b], 1).relu().flatten(1))


def _randomize_bn(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 2)
                m.bias.uniform_(-1, 1)
    return model.eval()


@pytest.mark.parametrize("shared_bn", [False, True])
def test_a_layer_called_twice_is_folded_per_call_site(shared_bn):
    model = _randomize_bn(TwoSites(shared_bn))
    explainer = lrpfx.compile(model, "epsilon")
    x = torch.randn(2, 3, 8, 8)
    out = explainer(x, target=1)
    torch.testing.assert_close(out.output, model(x), rtol=1e-12, atol=1e-12)
    assert "2 BatchNorm folded" in repr(explainer)
    code = explainer.graph_module.code
    assert "conv_weight_folded_1" in code  # two constants, one per call site


# -- the model changes after compile ---------------------------------------------------------------
def _linear_bn():
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
    return _randomize_bn(model)


def _step(model, optimizer):
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()


@pytest.mark.parametrize("kind", ["fused", "foreach", "plain"])
def test_an_optimizer_step_after_compile_is_refused_fused_or_not(kind):
    model = _linear_bn()
    explainer = lrpfx.compile(model)
    x = torch.randn(2, 4)
    explainer(x)
    options = {"fused": {"fused": True}, "foreach": {"foreach": True}, "plain": {"foreach": False}}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, **options[kind])
    before = model[0].weight._version
    _step(model, optimizer)
    if kind == "fused":
        assert model[0].weight._version == before  # the case version counters do not see
    with pytest.raises(StaleExplainerError, match=r"the model's tensor '\d\.(weight|bias)' was "
                       r"(updated by an optimizer step|written in place).*Compile the model"):
        explainer(x)
    lrpfx.compile(model)(x)  # compiled again: fine


def test_a_fused_adam_step_is_refused():
    model = _linear_bn()
    explainer = lrpfx.compile(model)
    _step(model, torch.optim.Adam(model.parameters(), fused=True))
    with pytest.raises(StaleExplainerError, match="optimizer step"):
        explainer(torch.randn(2, 4))


def test_an_optimizer_of_another_model_is_not_a_change():
    model, other = _linear_bn(), _linear_bn()
    explainer = lrpfx.compile(model)
    _step(other, torch.optim.SGD(other.parameters(), lr=0.1, fused=True))
    explainer(torch.randn(2, 4))


def test_a_model_compiled_in_training_mode_is_watched_not_its_eval_copy():
    model = _linear_bn().train()
    with pytest.warns(UserWarning, match="training mode"):
        explainer = lrpfx.compile(model)
    x = torch.randn(2, 4)
    torch.testing.assert_close(explainer(x).output, model.eval()(x))
    model.train()
    _step(model, torch.optim.SGD(model.parameters(), lr=0.1))  # also updates BN statistics
    with pytest.raises(StaleExplainerError, match="the model's tensor"):
        explainer(x)
    with pytest.warns(UserWarning, match="training mode"):
        explainer = lrpfx.compile(model)
    model(torch.randn(5, 4))  # a forward in training mode: new BatchNorm statistics
    with pytest.raises(StaleExplainerError, match="'1.num_batches_tracked'"):
        explainer(x)


@pytest.mark.parametrize(("change", "says"), [
    (lambda m: setattr(m, "3", nn.Linear(6, 3)), "'3.weight' was replaced by another tensor"),
    (lambda m: m.load_state_dict(_linear_bn().state_dict(), assign=True), "replaced"),
    (lambda m: setattr(m[0].weight, "data", torch.zeros(6, 4)), "given new data"),
    (lambda m: m.float(), "given new data"),
    (lambda m: m[3].register_buffer("extra", torch.zeros(1)), "has a new tensor '3.extra'"),
    (lambda m: setattr(m[3], "bias", None), "'3.bias' was removed"),
])
def test_a_tensor_replaced_after_compile_is_refused(change, says):
    model = _linear_bn()
    explainer = lrpfx.compile(model)
    change(model)
    with pytest.raises(StaleExplainerError, match=says):
        explainer(torch.randn(2, 4))


def test_an_unchanged_model_is_explained_after_a_forward_in_eval_mode():
    model = _linear_bn()
    explainer = lrpfx.compile(model)
    with torch.no_grad():
        model(torch.randn(2, 4))
    explainer(torch.randn(2, 4))
    del model  # the program keeps what it needs
    explainer(torch.randn(2, 4))


# -- tracing leaves the model's own state alone --------------------------------------------------
class Cached(nn.Module):
    """Caches a value derived from its parameters in eval mode, as timm's LeViT does with its
    attention biases: tracing runs this ``forward``, so the cache would keep a proxy."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.bias = nn.Parameter(torch.randn(4))
        self.cache: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.linear(x) + self.bias * 2
        if "bias" not in self.cache:
            self.cache["bias"] = self.bias * 2
        return self.linear(x) + self.cache["bias"]


def test_tracing_leaves_no_proxy_in_the_model_and_compiles_again():
    model, x = Cached().eval(), torch.randn(2, 4)
    first = lrpfx.compile(model, "epsilon-plus")(x)
    assert model.cache == {}  # as before compile: the traced value is gone
    copy_after = __import__("copy").deepcopy(model)  # copies and a second compile still work
    second = lrpfx.compile(copy_after, "epsilon-plus")(x)
    torch.testing.assert_close(first.relevance, second.relevance)
    torch.testing.assert_close(first.output, model(x))


# -- hooks on the model itself ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["pre", "post", "global"])
def test_hooks_of_the_model_itself_are_warned_about(kind):
    model = nn.Sequential(nn.Linear(4, 3))
    root = nn.Sequential(model).eval()  # the model's own hooks, not a layer's
    double = (lambda m, args: (args[0] * 2,)) if kind == "pre" else (lambda m, a, out: out * 2)
    if kind == "global":
        handle = torch.nn.modules.module.register_module_forward_hook(double)
    else:
        register = root.register_forward_pre_hook if kind == "pre" else root.register_forward_hook
        handle = register(double)
    try:
        with pytest.warns(UserWarning, match=r"does not run forward hooks of the model itself "
                          r"\(Sequential\) or global module hooks, and there are 1 forward "):
            lrpfx.compile(root)
    finally:
        handle.remove()


# -- images deeper than 8 bits ---------------------------------------------------------------------
def _png(path: Path, pixels: np.ndarray) -> None:
    """A PNG of 16-bit samples, (H, W, 3) colour or (H, W) grey, written by hand."""
    h, w = pixels.shape[:2]
    colour = 2 if pixels.ndim == 3 else 0
    rows = b"".join(b"\0" + pixels[i].astype(">u2").tobytes() for i in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("grey", [False, True])
def test_a_16_bit_png_is_decoded_by_its_depth(tmp_path, grey):
    values = np.array([0, 257 * 64, 257 * 128, 65535], dtype=np.uint16)
    pixels = np.tile(values, (3, 1))
    pixels = pixels if grey else np.stack([pixels, pixels // 2, 65535 - pixels], -1)
    _png(tmp_path / "deep.png", pixels)
    image = load_image(tmp_path / "deep.png")
    assert image.dtype == torch.uint8 and image.shape == (3, 3, 4)
    assert image[0, 0].tolist() == [0, 64, 128, 255]
    if not grey:
        assert image[2, 0].tolist() == [255, 191, 127, 0]


def test_preprocess_scales_by_the_dtype():
    image8 = torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8)
    image16 = image8.to(torch.int32).mul(257).to(torch.uint16)
    torch.testing.assert_close(preprocess(image16, 32), preprocess(image8, 32))
    torch.testing.assert_close(preprocess(image8.double() / 255, 32), preprocess(image8, 32))
