"""The FFT positional convolution is the direct one: outputs and gradients, every shape."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from asr.fft import fast_fft_length
from asr.model.position import ConvPositionalEmbedding, grouped_conv1d_fft

pytestmark = pytest.mark.usefixtures("one_thread")


def direct(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int) -> torch.Tensor:
    """The reference: torch's convolution with padding k // 2, trimmed to T frames."""
    y = F.conv1d(x, weight, bias, padding=weight.shape[-1] // 2, groups=groups)
    return y[..., : x.shape[-1]]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize(("n", "expected"), [
    (1, 1), (2, 2), (7, 8), (11, 12), (13, 15), (97, 100), (752, 768), (1000, 1000), (1025, 1080),
])
def test_fast_fft_length_is_the_next_2_3_5_smooth_number(n, expected):
    assert fast_fft_length(n) == expected


@pytest.mark.parametrize(("channels", "groups", "kernel", "frames"), [
    (8, 1, 1, 5), (8, 2, 3, 1), (8, 4, 4, 7), (12, 3, 5, 40), (16, 16, 8, 33),
    (32, 4, 16, 16), (32, 4, 15, 3), (48, 16, 128, 130), (48, 16, 128, 20),
])
def test_fft_matches_the_direct_convolution_and_its_gradients(channels, groups, kernel, frames):
    g = torch.Generator().manual_seed(channels * 1000 + kernel * 10 + frames)
    x = torch.randn(3, channels, frames, generator=g, dtype=torch.float64).requires_grad_()
    w = torch.randn(channels, channels // groups, kernel, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.randn(channels, generator=g, dtype=torch.float64).requires_grad_()
    grad_out = torch.randn(3, channels, frames, generator=g, dtype=torch.float64)
    outs = {}
    for name, fn in (("direct", direct), ("fft", grouped_conv1d_fft)):
        y = fn(x.float(), w.float(), b.float(), groups)
        grads = torch.autograd.grad(y, (x, w, b), grad_out.float())
        outs[name] = (y, *grads)
    for fft_value, direct_value in zip(outs["fft"], outs["direct"], strict=True):
        assert fft_value.shape == direct_value.shape
        assert relative_error(fft_value, direct_value) < 1e-5


@pytest.mark.parametrize("kernel", [7, 8])
def test_the_module_gives_the_same_output_and_gradients_with_either_impl(kernel):
    """A padded batch: the zeroed padding must reach both implementations alike."""
    torch.manual_seed(0)
    module = ConvPositionalEmbedding(32, kernel, 4, impl="direct")
    x = torch.randn(3, 25, 32)
    pad_mask = torch.arange(25) < torch.tensor([25, 11, 1])[:, None]
    results = {}
    for impl in ("direct", "fft"):
        module.impl = impl
        module.zero_grad()
        xi = x.clone().requires_grad_()
        y = module(xi, pad_mask)
        y.pow(2).sum().backward()
        results[impl] = (y, xi.grad, *(p.grad.clone() for p in module.parameters()))
    for fft_value, direct_value in zip(results["fft"], results["direct"], strict=True):
        assert relative_error(fft_value, direct_value) < 1e-5


def test_auto_is_the_direct_convolution_on_the_cpu_bit_for_bit():
    torch.manual_seed(0)
    module = ConvPositionalEmbedding(32, 8, 4)
    x, pad_mask = torch.randn(2, 19, 32), torch.arange(19) < torch.tensor([19, 6])[:, None]
    auto = module(x, pad_mask)
    module.impl = "direct"
    assert module.impl != "auto" and torch.equal(auto, module(x, pad_mask))


def test_fft_under_bf16_autocast_returns_the_dtype_of_the_direct_convolution():
    """bf16 out as from the direct convolution, values within bf16 rounding of fp32 (the FFT
    runs in fp32). The reference is fp32: on the CPU, oneDNN's bf16 grouped convolution with
    an even kernel is itself wrong in torch 2.11 (relative error ~1)."""
    torch.manual_seed(0)
    module = ConvPositionalEmbedding(32, 8, 4)
    x, pad_mask = torch.randn(2, 30, 32, dtype=torch.bfloat16), torch.ones(2, 30, dtype=torch.bool)
    outs = {}
    with torch.no_grad():
        reference = module(x.float(), pad_mask)
        for impl in ("direct", "fft"):
            module.impl = impl
            with torch.autocast("cpu", dtype=torch.bfloat16):
                outs[impl] = module(x, pad_mask)
    assert outs["fft"].dtype == outs["direct"].dtype == torch.bfloat16
    assert relative_error(outs["fft"].float(), reference) < 1e-2


def test_parameters_and_checkpoints_are_the_same_for_both_impls():
    direct_module = ConvPositionalEmbedding(32, 8, 4, impl="direct")
    fft_module = ConvPositionalEmbedding(32, 8, 4, impl="fft")
    fft_module.load_state_dict(direct_module.state_dict())
    assert {k: v.shape for k, v in direct_module.state_dict().items()} == {
        k: v.shape for k, v in fft_module.state_dict().items()}


def test_an_unknown_impl_is_refused_with_the_config_key():
    with pytest.raises(ValueError, match=r"model\.pos_conv_impl"):
        ConvPositionalEmbedding(32, 8, 4, impl="winograd")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the FFT runs on cuFFT there")
def test_fft_matches_the_direct_convolution_on_cuda_at_the_paper_size():
    torch.manual_seed(0)
    module = ConvPositionalEmbedding(768, 128, 16, impl="direct").cuda()
    x = torch.randn(4, 417, 768, device="cuda")
    pad_mask = torch.arange(417, device="cuda") < torch.tensor([417, 300, 12, 417], device="cuda")[:, None]
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            direct_out = module(x, pad_mask)
            module.impl = "fft"
            fft_out = module(x, pad_mask)
    finally:
        torch.backends.cudnn.allow_tf32 = True
    assert relative_error(fft_out - x, direct_out - x) < 1e-5
