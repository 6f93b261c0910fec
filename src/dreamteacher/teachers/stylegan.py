"""A StyleGAN2 generator (Karras et al., CVPR 2020: mapping network, modulated and demodulated
3x3 convolutions, per-pixel noise, skip-connected RGB outputs) and a residual discriminator,
in plain PyTorch: no custom CUDA or C++ ops, so they run on the CPU.

Parameter names, shapes and run-time gains are those of the StyleGAN2-ADA generator, so that
the EMA generator of an official checkpoint loads with a strict key match
(teachers/stylegan_pkl.py). The generator may be non-square: its 4 px-high constant is
(4, 4 W / H) wide, so a 64x80 generator has blocks of 4x5, 8x10, ... 64x80.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dreamteacher.errors import UserError
from dreamteacher.randomness import keyed_randn

SQRT2 = math.sqrt(2)
# train-teacher --kind gan --preset: widths (channels = min(channel_base / side, channel_max))
GAN_PRESETS = {
    "tiny": {"z_dim": 128, "mapping_layers": 2, "channel_base": 2048, "channel_max": 64},
    "small": {"z_dim": 256, "mapping_layers": 4, "channel_base": 8192, "channel_max": 256},
    "base": {"z_dim": 512, "mapping_layers": 8, "channel_base": 32768, "channel_max": 512},
}


def lrelu(x: torch.Tensor) -> torch.Tensor:
    """Leaky ReLU (slope 0.2) with StyleGAN's gain sqrt(2)."""
    return F.leaky_relu(x, 0.2) * SQRT2


def fir_filter() -> torch.Tensor:
    """The [1, 3, 3, 1] resampling filter, separable, normalised to sum 1 (# 4, 4)."""
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    return torch.outer(k, k) / k.sum() ** 2


def fir(x: torch.Tensor, f: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    """Pad (left, right, top, bottom), then convolve every channel with f (# kh, kw)."""
    c = x.shape[1]
    kernel = f.flip(0, 1).to(x.dtype)[None, None].expand(c, 1, *f.shape)
    return F.conv2d(F.pad(x, pad), kernel, groups=c)


def upsample2x(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Zero-insertion upsampling by 2, filtered by 4 f (# B, C, H, W -> B, C, 2H, 2W)."""
    b, c, h, w = x.shape
    up = x.new_zeros(b, c, 2 * h, 2 * w)
    up[:, :, ::2, ::2] = x
    return fir(up, f * 4, (2, 1, 2, 1))


class FullyConnected(nn.Module):
    """A linear layer with an equalised learning rate: weights are stored divided by
    `lr_mul` and scaled by lr_mul / sqrt(fan-in) when used; the bias by lr_mul."""

    def __init__(
        self, cin: int, cout: int, lr_mul: float = 1.0, bias_init: float = 0.0, act: bool = False
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin) / lr_mul)
        self.bias = nn.Parameter(torch.full([cout], float(bias_init)))
        self.weight_gain, self.bias_gain, self.act = lr_mul / math.sqrt(cin), lr_mul, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.bias_gain)
        return lrelu(x) if self.act else x


class Mapping(nn.Module):
    """z -> w: normalised z through `layers` lrelu layers (lr x 0.01); w_avg is the running
    mean of w (for the truncation trick)."""

    def __init__(self, z_dim: int, w_dim: int, num_ws: int, layers: int = 8, beta: float = 0.995):
        super().__init__()
        self.z_dim, self.w_dim, self.num_ws, self.layers, self.beta = (
            z_dim,
            w_dim,
            num_ws,
            layers,
            beta,
        )
        for i in range(layers):
            setattr(
                self, f"fc{i}", FullyConnected(z_dim if i == 0 else w_dim, w_dim, 0.01, act=True)
            )
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor, psi: float = 1.0) -> torch.Tensor:
        """# B, z_dim -> # B, num_ws, w_dim; psi < 1 pulls w toward w_avg."""
        x = z * (z.square().mean(1, keepdim=True) + 1e-8).rsqrt()
        for i in range(self.layers):
            x = getattr(self, f"fc{i}")(x)
        if self.training:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(0).lerp(self.w_avg, self.beta))
        if psi != 1:
            x = self.w_avg.lerp(x, psi)
        return x.unsqueeze(1).repeat(1, self.num_ws, 1)


class SynthesisLayer(nn.Module):
    """A modulated 3x3 convolution (optionally upsampling by 2), demodulated, plus scaled
    noise, bias, lrelu and an optional clamp."""

    def __init__(
        self,
        cin: int,
        cout: int,
        w_dim: int,
        size: tuple[int, int],
        up: bool = False,
        conv_clamp: float | None = None,
    ):
        super().__init__()
        self.affine = FullyConnected(w_dim, cin, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.register_buffer("resample_filter", fir_filter())
        self.register_buffer("noise_const", torch.randn(size))
        self.up, self.conv_clamp = up, conv_clamp

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None):
        s = self.affine(w)  # B, Cin
        # demodulation: each output channel of the modulated weight to unit norm
        d = ((self.weight[None] * s[:, None, :, None, None]).square().sum([2, 3, 4]) + 1e-8).rsqrt()
        x = x * s[:, :, None, None]
        if self.up:  # transposed conv (stride 2, unflipped weight) then the [1,3,3,1] filter
            x = F.conv_transpose2d(x, self.weight.transpose(0, 1), stride=2)
            x = fir(x, self.resample_filter * 4, (1, 1, 1, 1))
        else:
            x = F.conv2d(x, self.weight, padding=1)
        x = x * d[:, :, None, None]  # B, Cout, h, w
        if noise is not None:
            x = x + noise * self.noise_strength
        x = lrelu(x + self.bias[None, :, None, None])
        return x.clamp(-self.conv_clamp, self.conv_clamp) if self.conv_clamp else x


class ToRGB(nn.Module):
    """A modulated 1x1 convolution to the image channels (not demodulated, linear)."""

    def __init__(self, cin: int, cout: int, w_dim: int, conv_clamp: float | None = None):
        super().__init__()
        self.affine = FullyConnected(w_dim, cin, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(cout, cin, 1, 1))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.weight_gain, self.conv_clamp = 1 / math.sqrt(cin), conv_clamp

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        s = self.affine(w) * self.weight_gain  # B, Cin
        x = F.conv2d(x * s[:, :, None, None], self.weight) + self.bias[None, :, None, None]
        return x.clamp(-self.conv_clamp, self.conv_clamp) if self.conv_clamp else x


class SynthesisBlock(nn.Module):
    """One resolution: (the constant, or an upsampling conv) and a conv; its RGB added to the
    upsampled image of the blocks before (the 'skip' architecture)."""

    def __init__(self, cin, cout, w_dim, size, img_channels=3, conv_clamp=None):
        super().__init__()
        self.first = cin == 0
        if self.first:
            self.const = nn.Parameter(torch.randn(cout, *size))
        else:
            self.conv0 = SynthesisLayer(cin, cout, w_dim, size, up=True, conv_clamp=conv_clamp)
        self.conv1 = SynthesisLayer(cout, cout, w_dim, size, conv_clamp=conv_clamp)
        self.torgb = ToRGB(cout, img_channels, w_dim, conv_clamp)
        self.register_buffer("resample_filter", fir_filter())
        self.num_conv = 1 if self.first else 2

    def forward(self, x, img, ws, noise):
        """ws # B, num_conv + 1, w_dim; noise(layer) -> noise map or None."""
        if self.first:
            x = self.const[None].expand(ws.shape[0], -1, -1, -1)
            x = self.conv1(x, ws[:, 0], noise(self.conv1))
        else:
            x = self.conv0(x, ws[:, 0], noise(self.conv0))
            x = self.conv1(x, ws[:, 1], noise(self.conv1))
        y = self.torgb(x, ws[:, self.num_conv])
        img = y if img is None else upsample2x(img, self.resample_filter) + y
        return x, img


def block_sizes(resolution: list[int]) -> list[tuple[int, int]]:
    """The (h, w) of each block, coarse to fine: halving the image until its short side is 4."""
    h, w = resolution
    n = int(math.log2(min(h, w) / 4))
    if min(h, w) != 4 * 2**n or h % 2**n or w % 2**n:
        raise UserError(
            f"a StyleGAN generator needs an image size whose short side is 4 x a power of 2 and "
            f"whose long side it divides, got {h}x{w}; pass e.g. --image-size 64 80"
        )
    return [(h >> (n - i), w >> (n - i)) for i in range(n + 1)]


class Synthesis(nn.Module):
    """ws -> image, through blocks b4, b8, ... (named by their short side)."""

    def __init__(
        self,
        w_dim: int,
        resolution: list[int],
        img_channels: int = 3,
        channel_base: int = 32768,
        channel_max: int = 512,
        conv_clamp: float | None = None,
    ):
        super().__init__()
        self.resolution = list(resolution)
        self.sizes = block_sizes(self.resolution)
        self.names = [f"b{min(s)}" for s in self.sizes]
        self.channels = [min(channel_base // min(s), channel_max) for s in self.sizes]
        cin = 0
        for name, size, cout in zip(self.names, self.sizes, self.channels, strict=True):
            block = SynthesisBlock(cin, cout, w_dim, size, img_channels, conv_clamp)
            setattr(self, name, block)
            cin = cout
        self.num_ws = 2 * len(self.sizes)  # 1 + 2 (n - 1) convs, and the last block's RGB

    def forward(
        self, ws: torch.Tensor, noise_mode: str = "const", keys: list[int] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(image # B, C, H, W in about [-1, 1], each block's features # B, C_i, h_i, w_i).
        noise_mode: const (the stored maps), random (keyed by `keys` when given), none."""
        layer_ids: dict[int, int] = {}

        def noise(layer: SynthesisLayer) -> torch.Tensor | None:
            if noise_mode == "none":
                return None
            if noise_mode == "const":
                return layer.noise_const
            shape = (1, *layer.noise_const.shape)
            if keys is None:
                return torch.randn(ws.shape[0], *shape, device=ws.device)
            salt = 1000 + layer_ids.setdefault(id(layer), len(layer_ids))
            return keyed_randn(keys, shape, ws.device, salt=salt)

        x = img = None
        feats, i = [], 0
        for name in self.names:
            block = getattr(self, name)
            x, img = block(x, img, ws[:, i : i + block.num_conv + 1], noise)
            feats.append(x)
            i += block.num_conv
        return img, feats


class Generator(nn.Module):
    """z -> image: Mapping + Synthesis. `settings()` are its constructor's arguments."""

    def __init__(
        self,
        resolution: list[int],
        z_dim: int = 512,
        w_dim: int = 512,
        mapping_layers: int = 8,
        channel_base: int = 32768,
        channel_max: int = 512,
        conv_clamp: float | None = None,
        img_channels: int = 3,
    ):
        super().__init__()
        self._settings = {
            "resolution": list(resolution), "z_dim": z_dim, "w_dim": w_dim,
            "mapping_layers": mapping_layers, "channel_base": channel_base,
            "channel_max": channel_max, "conv_clamp": conv_clamp, "img_channels": img_channels,
        }  # fmt: skip
        self.synthesis = Synthesis(w_dim, resolution, img_channels, channel_base, channel_max,
                                   conv_clamp)  # fmt: skip
        self.mapping = Mapping(z_dim, w_dim, self.synthesis.num_ws, mapping_layers)
        self.z_dim = z_dim

    def settings(self) -> dict:
        return dict(self._settings)

    def forward(self, z, psi: float = 1.0, noise_mode: str = "const", keys=None):
        return self.synthesis(self.mapping(z, psi), noise_mode, keys)


class Conv(nn.Module):
    """A convolution with an equalised learning rate (weights N(0, 1), scaled by
    1 / sqrt(fan-in) when used), as every layer of StyleGAN2's discriminator."""

    def __init__(self, cin: int, cout: int, k: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.gain, self.pad = 1 / math.sqrt(cin * k * k), k // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.gain, self.bias, padding=self.pad)


class DBlock(nn.Module):
    """Residual discriminator block: two 3x3 convs and a 1x1 skip, downsampled by 2."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv0 = Conv(cin, cin, 3)
        self.conv1 = Conv(cin, cout, 3)
        self.skip = Conv(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.avg_pool2d(lrelu(self.conv1(lrelu(self.conv0(x)))), 2)
        return (F.avg_pool2d(self.skip(x), 2) + y) * math.sqrt(0.5)


class Discriminator(nn.Module):
    """Image -> realness logit (# B): RGB in, residual blocks down to the generator's
    constant size, minibatch standard deviation, a conv and two linear layers (every layer
    with an equalised learning rate)."""

    def __init__(self, resolution: list[int], channel_base: int = 32768, channel_max: int = 512):
        super().__init__()
        sizes = block_sizes(resolution)[::-1]  # fine -> coarse
        ch = [min(channel_base // min(s), channel_max) for s in sizes]
        self.fromrgb = Conv(3, ch[0], 1)
        self.blocks = nn.Sequential(*(DBlock(a, b) for a, b in zip(ch, ch[1:], strict=False)))
        h, w = sizes[-1]
        self.conv = Conv(ch[-1] + 1, ch[-1], 3)
        self.fc = FullyConnected(ch[-1] * h * w, ch[-1], act=True)
        self.out = FullyConnected(ch[-1], 1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.blocks(lrelu(self.fromrgb(img)))  # B, C, 4, w0
        g = math.gcd(x.shape[0], 4)  # minibatch std over groups of up to 4 samples
        y = x.reshape(g, -1, *x.shape[1:]).std(0, correction=0).mean([1, 2, 3])  # B/g
        y = y.repeat(g)[:, None, None, None].expand(-1, 1, *x.shape[2:])
        x = lrelu(self.conv(torch.cat([x, y], 1)))
        return self.out(self.fc(x.flatten(1))).squeeze(1)
