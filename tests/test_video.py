"""Video: 3-D convolutions and pools explained and conserving, the frame strip of
``lrpfx.heatmap.frames``, and the video example on a torchvision model."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lrpfx
from lrpfx import composites
from lrpfx.heatmap import frames
from lrpfx.images import load_image

EXAMPLES = Path(__file__).parent.parent / "examples"
LRP0 = composites.EpsilonOnly(epsilon=1e-12, stabilizer=1e-12, ignore_bias=True)


def clip_net() -> nn.Sequential:
    """A tiny video classifier: conv3d, BatchNorm3d, max/avg 3-D pools, a (2+1)-D pair."""
    net = nn.Sequential(
        nn.Conv3d(3, 4, (3, 5, 5), stride=(1, 2, 2), padding=(1, 2, 2)), nn.BatchNorm3d(4),
        nn.ReLU(), nn.MaxPool3d((1, 2, 2)), nn.Conv3d(4, 6, (1, 3, 3), padding=(0, 1, 1)),
        nn.ReLU(), nn.Conv3d(6, 6, (3, 1, 1), padding=(1, 0, 0)), nn.ReLU(),
        nn.AvgPool3d(2), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(6, 5))
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.mark.parametrize("maxpool", ["avg", "wta"])
def test_a_3d_net_conserves_and_equals_input_times_gradient(maxpool):
    model, x = clip_net(), torch.randn(2, 3, 4, 16, 16)
    out = lrpfx.compile(model, LRP0, maxpool=maxpool)(x, target=2)
    torch.testing.assert_close(out.output, model(x), rtol=1e-12, atol=1e-12)
    assert out.relevance.shape == x.shape and torch.isfinite(out.relevance).all()
    with torch.no_grad():  # without biases (the folded BatchNorm's shift is one), LRP-0 conserves
        for m in model.modules():
            if isinstance(m, (nn.Conv3d, nn.Linear, nn.BatchNorm3d)):
                m.bias.zero_()
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.zero_()
    out = lrpfx.compile(model, LRP0, maxpool=maxpool)(x, target=2)
    torch.testing.assert_close(out.relevance.sum((1, 2, 3, 4)), out.output[:, 2], rtol=1e-8,
                               atol=1e-10)
    if maxpool == "wta":  # and equals x · ∇f where the max-pool passes the gradient
        xg = x.clone().requires_grad_(True)
        model(xg)[:, 2].sum().backward()
        torch.testing.assert_close(out.relevance, x * xg.grad, rtol=1e-6, atol=1e-8)


def test_frames_draws_the_clip_and_its_relevance_on_one_scale():
    clip = torch.rand(3, 4, 6, 5)
    relevance = torch.zeros(3, 4, 6, 5)
    relevance[:, 1, 2, 3] = 1.0  # one relevant pixel in frame 1; the others white
    relevance[:, 3, 0, 0] = -0.5  # against, half as strong, in frame 3
    strip = frames(clip, relevance).double()
    assert strip.shape == (8, 3, 6, 5)
    torch.testing.assert_close(strip[:4].amin(), torch.tensor(0.0))  # the clip's one range
    torch.testing.assert_close(strip[:4].amax(), torch.tensor(1.0))
    torch.testing.assert_close(strip[5, :, 2, 3], torch.tensor([1.0, 0.0, 0.0]))  # full red
    torch.testing.assert_close(strip[7, :, 0, 0], torch.tensor([0.5, 0.5, 1.0]))  # half blue
    torch.testing.assert_close(strip[4], torch.ones(3, 6, 5))  # zero relevance: white
    with pytest.raises(ValueError, match=r"one clip \(C, T, H, W\).*x\[i\]"):
        frames(clip.unsqueeze(0), relevance.unsqueeze(0))


def test_the_video_example_writes_a_frame_strip(tmp_path):
    torch.set_default_dtype(torch.float32)  # the examples run as users run them
    main = runpy.run_path(str(EXAMPLES / "video.py"), run_name="example_video")["main"]
    path = main(["--arch", "r3d_18", "--frames", "4", "--size", "32",
                 "--out", str(tmp_path / "clip.png")])
    assert load_image(path).shape == (3, 2 * 34 + 2, 4 * 34 + 2)  # 2 rows of 4 frames


def test_a_max_pool_read_as_an_average_on_fewer_frames_than_its_window():
    """S3D's 3×3×3 max-pools (padding 1) meet 2 frames; torch's average pool refuses an input
    smaller than its window, so the ``"avg"`` reading pads first: the same pool."""
    model = nn.Sequential(nn.MaxPool3d(3, stride=1, padding=1), nn.Flatten()).eval()
    x = torch.rand(2, 3, 2, 5, 4) + 0.1
    r = torch.randn(2, 3 * 2 * 5 * 4)
    out = lrpfx.compile(model, LRP0, maxpool="avg")(x, output_relevance=r)
    xg = x.clone().requires_grad_(True)
    z = F.avg_pool3d(F.pad(xg, [1] * 6), 3, 1, 0).flatten(1)  # zeros counted, as with padding
    (c,) = torch.autograd.grad(z, xg, r / z.detach())
    torch.testing.assert_close(out.relevance, x * c, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(out.relevance.sum(), r.sum(), rtol=1e-8, atol=0)


def test_tensor_split_routes_each_piece_back():
    """MViT's pooling splits the class token off with ``torch.tensor_split(x, indices=(1,))``."""

    class Split(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(5, 2, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            token, rest = torch.tensor_split(x, indices=(1,), dim=1)
            a, b = rest.tensor_split(2, dim=1)
            return self.fc(torch.cat([b * 2.0, token, a.relu()], dim=1))

    model, x = Split().eval(), torch.randn(3, 5)
    out = lrpfx.compile(model, LRP0)(x, target=1)
    xg = x.clone().requires_grad_(True)
    model(xg)[:, 1].sum().backward()
    torch.testing.assert_close(out.relevance, x * xg.grad, rtol=1e-8, atol=1e-10)
