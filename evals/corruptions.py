"""ImageNet-C / CIFAR-10-C common corruptions (Hendrycks & Dietterich, 2019) on batches of [0, 1] images, in torch.

Every corruption takes `x` float [B, 3, H, W] in [0, 1] (before CLIP normalisation) on any device and returns a
tensor of the same shape, dtype and device, clipped to [0, 1]. Parameters per severity come from the reference
scripts: `params="imagenet"` is `make_imagenet_c.py` (equal to the `imagecorruptions` package), `params="cifar"` is
`make_cifar_c.py`, and `params="auto"` picks cifar for images of at most 64 px a side, imagenet otherwise.

Randomness comes from `generator`: a `torch.Generator` (random numbers are drawn on its device, then moved to x's),
an int seed (a CPU generator, so a seed gives the same corruption on every device), or None (torch's global RNG on
x's device). Known departures from the references, all documented where they happen: motion blur is a line-kernel
re-implementation of ImageMagick's MotionBlurImage (the `imagecorruptions` numpy port, exactly); impulse noise flips
each value independently (scikit-image >= 0.19 semantics); JPEG round-trips through PIL on the CPU.

Why one module of ~450 lines: the ten corruptions share their parameter tables (two resolutions × five severities),
the generator handling and the `corrupt`/`parse_corruptions` entry points; each function is a few lines, and
splitting them would spread one table over several files. Writes nothing.
"""

from __future__ import annotations

import io
import math
from functools import lru_cache
from typing import Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from PIL import Image

__all__ = ["CORRUPTIONS", "SEVERITIES", "IMAGENET_PARAMS", "CIFAR_PARAMS", "corrupt", "parse_corruptions",
           "resolve_params", "rgb_to_hsv", "hsv_to_rgb", "gaussian_noise", "shot_noise", "impulse_noise",
           "defocus_blur", "gaussian_blur", "motion_blur", "contrast", "brightness", "jpeg_compression", "pixelate"]

Params = Literal["auto", "imagenet", "cifar"]
GeneratorLike = torch.Generator | int | None

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
AUTO_CIFAR_MAX_SIDE = 64

# make_imagenet_c.py == imagecorruptions 1.1.2 (gaussian_blur is one of the four "validation" corruptions there)
IMAGENET_PARAMS: dict[str, tuple] = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),  # std of additive noise
    "shot_noise": (60, 25, 12, 5, 3),  # Poisson photons per unit intensity
    "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),  # salt-and-pepper amount
    "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),  # (disk radius, alias blur sigma)
    "gaussian_blur": (1, 2, 3, 4, 6),  # sigma
    "motion_blur": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),  # (radius, sigma)
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),  # factor towards the per-channel mean
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),  # added to HSV value
    "jpeg_compression": (25, 18, 15, 10, 7),  # JPEG quality
    "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),  # downsampling factor
}
# make_cifar_c.py (hendrycks/robustness)
CIFAR_PARAMS: dict[str, tuple] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "shot_noise": (500, 250, 100, 75, 50),
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1),
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "jpeg_compression": (80, 65, 58, 50, 40),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
}
_TABLES = {"imagenet": IMAGENET_PARAMS, "cifar": CIFAR_PARAMS}


# ---------------------------------------------------------------------------------------------------- helpers

def resolve_params(x: torch.Tensor, params: str = "auto") -> str:
    """Return "imagenet" or "cifar" for `params`; "auto" means cifar when both sides of x are at most 64 px."""
    if params == "auto":
        return "cifar" if max(x.shape[-2:]) <= AUTO_CIFAR_MAX_SIDE else "imagenet"
    if params not in _TABLES:
        raise ValueError(f"params must be 'auto', 'imagenet' or 'cifar', got {params!r}")
    return params


def _check_severity(name: str, severity: int) -> None:
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or severity not in SEVERITIES:
        raise ValueError(f"severity for corruption {name!r} must be an integer in 1..5, got {severity!r}")


def _prepare(name: str, x: torch.Tensor, severity: int, params: str) -> tuple[torch.Tensor, object]:
    """Validate the call; return x in a float working dtype and this corruption's parameter for the severity."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected a batch of RGB images [B, 3, H, W], got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point batch in [0, 1], got {x.dtype}")
    _check_severity(name, severity)
    table = _TABLES[resolve_params(x, params)]
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    return work, table[name][int(severity) - 1]


def _finish(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return out.clamp(0.0, 1.0).to(like.dtype)


def _as_generator(generator: GeneratorLike) -> torch.Generator | None:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
        return torch.Generator("cpu").manual_seed(int(generator))
    raise ValueError(f"generator must be a torch.Generator, an int seed or None, got {type(generator).__name__}")


def _randn(shape: Sequence[int], gen: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    if gen is None:
        return torch.randn(shape, device=like.device, dtype=like.dtype)
    return torch.randn(shape, generator=gen, device=gen.device, dtype=like.dtype).to(like.device)


def _rand(shape: Sequence[int], gen: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    if gen is None:
        return torch.rand(shape, device=like.device, dtype=like.dtype)
    return torch.rand(shape, generator=gen, device=gen.device, dtype=like.dtype).to(like.device)


def _border_index(n: int, before: int, after: int, mode: str, device: torch.device) -> torch.Tensor:
    """Source indices for a padded axis: "replicate" (scipy 'nearest') or "reflect101" (OpenCV BORDER_DEFAULT)."""
    idx = torch.arange(-before, n + after, device=device)
    if mode == "replicate" or n == 1:
        return idx.clamp(0, n - 1)
    period = 2 * (n - 1)  # any pad width, unlike F.pad(mode="reflect")
    idx = idx.remainder(period)
    return torch.where(idx >= n, period - idx, idx)


def _pad(x: torch.Tensor, ph: int, pw: int, mode: str) -> torch.Tensor:
    h, w = x.shape[-2:]
    x = x.index_select(-2, _border_index(h, ph, ph, mode, x.device))
    return x.index_select(-1, _border_index(w, pw, pw, mode, x.device))


def _depthwise(x: torch.Tensor, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """Correlate every channel of x [B, C, H, W] with one odd-sized 2-D kernel, padding the border by `mode`."""
    kh, kw = kernel.shape
    c = x.shape[1]
    weight = repeat(kernel.to(device=x.device, dtype=x.dtype), "kh kw -> c 1 kh kw", c=c)
    return F.conv2d(_pad(x, kh // 2, kw // 2, mode), weight, groups=c)


def _separable(x: torch.Tensor, k1d: torch.Tensor, mode: str) -> torch.Tensor:
    x = _depthwise(x, rearrange(k1d, "k -> 1 k"), mode)
    return _depthwise(x, rearrange(k1d, "k -> k 1"), mode)


def _scipy_gaussian_1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """scipy.ndimage.gaussian_filter's kernel: radius int(truncate * sigma + 0.5), normalised to sum 1."""
    radius = int(truncate * float(sigma) + 0.5)
    xs = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 / float(sigma) ** 2 * xs ** 2)
    return k / k.sum()


def _cv2_gaussian_1d(ksize: int, sigma: float) -> torch.Tensor:
    """cv2.getGaussianKernel(ksize, sigma) for sigma > 0."""
    xs = torch.arange(ksize, dtype=torch.float64) - (ksize - 1) / 2
    k = torch.exp(-xs ** 2 / (2 * float(sigma) ** 2))
    return k / k.sum()


@lru_cache(maxsize=64)
def _disk_kernel(radius: float, alias_blur: float) -> torch.Tensor:
    """The reference `disk()`: an aliased disk on a 17x17 (or 2r+1) grid, normalised, then cv2.GaussianBlur'd."""
    if radius <= 8:
        coords, ksize = torch.arange(-8, 9, dtype=torch.float64), 3
    else:
        coords, ksize = torch.arange(-radius, radius + 1, dtype=torch.float64), 5
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    disk = (xx ** 2 + yy ** 2 <= radius ** 2).to(torch.float32)
    disk = (disk / disk.sum()).double()
    blurred = _separable(rearrange(disk, "h w -> 1 1 h w"), _cv2_gaussian_1d(ksize, alias_blur), "reflect101")
    kernel = blurred[0, 0]
    # drop border rows/columns that carry nothing (the small CIFAR disks live in the centre 3x3 of a 17x17 grid)
    keep = kernel.abs() > 1e-12 * kernel.abs().max()
    r = int(max(keep.any(1).nonzero().max() - kernel.shape[0] // 2, keep.any(0).nonzero().max() - kernel.shape[1] // 2))
    centre = kernel.shape[0] // 2
    return kernel[centre - r:centre + r + 1, centre - r:centre + r + 1].contiguous()


@lru_cache(maxsize=256)
def _pil_box_weights(n_in: int, n_out: int) -> torch.Tensor:
    """[n_out, n_in] weights of PIL's Image.BOX resampling along one axis (Pillow's precompute_coeffs)."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    for xx in range(n_out):
        center = (xx + 0.5) * scale
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n_in)
        for j in range(lo, hi):
            t = (j - center + 0.5) / filterscale
            if -0.5 < t <= 0.5:
                w[xx, j] = 1.0
        if w[xx].sum() > 0:
            w[xx] /= w[xx].sum()
    return w


def _pil_nearest_index(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """Source indices of PIL's Image.NEAREST resize along one axis: floor((i + 0.5) * n_in / n_out)."""
    idx = torch.floor((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out)).long()
    return idx.clamp(0, n_in - 1).to(device)


def _resize_box(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    wh = _pil_box_weights(x.shape[-2], h).to(device=x.device, dtype=x.dtype)
    ww = _pil_box_weights(x.shape[-1], w).to(device=x.device, dtype=x.dtype)
    return torch.einsum("oh,bchw,pw->bcop", wh, x, ww)


# ------------------------------------------------------------------------------------------------ colour space

def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """RGB [..., 3, H, W] in [0, 1] to HSV with hue in [0, 1), as skimage.color.rgb2hsv (blue wins hue ties)."""
    r, g, b = x.unbind(-3)
    v = torch.maximum(torch.maximum(r, g), b)
    delta = v - torch.minimum(torch.minimum(r, g), b)
    grey = delta == 0
    safe_delta = torch.where(grey, torch.ones_like(delta), delta)
    s = torch.where(grey, torch.zeros_like(v), delta / torch.where(grey, torch.ones_like(v), v))
    h = torch.where(b == v, 4.0 + (r - g) / safe_delta,
                    torch.where(g == v, 2.0 + (b - r) / safe_delta, (g - b) / safe_delta))
    h = torch.where(grey, torch.zeros_like(h), torch.remainder(h / 6.0, 1.0))
    return torch.stack([h, s, v], dim=-3)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """HSV [..., 3, H, W] (hue in [0, 1)) to RGB, as skimage.color.hsv2rgb."""
    h, s, v = hsv.unbind(-3)
    sector = torch.floor(h * 6.0)
    f = h * 6.0 - sector
    p, q, t = v * (1.0 - s), v * (1.0 - f * s), v * (1.0 - (1.0 - f) * s)
    sector = sector.long().remainder(6).unsqueeze(0)

    def pick(*candidates: torch.Tensor) -> torch.Tensor:
        return torch.stack(candidates).gather(0, sector).squeeze(0)

    return torch.stack([pick(v, q, p, p, t, v), pick(t, v, v, q, p, p), pick(p, p, t, v, v, q)], dim=-3)


# ------------------------------------------------------------------------------------------------ corruptions

def gaussian_noise(x: torch.Tensor, severity: int = 1, *, generator: GeneratorLike = None,
                   params: Params = "auto") -> torch.Tensor:
    """Add i.i.d. N(0, c^2) noise to every value."""
    work, c = _prepare("gaussian_noise", x, severity, params)
    gen = _as_generator(generator)
    return _finish(work + c * _randn(work.shape, gen, work), x)


def shot_noise(x: torch.Tensor, severity: int = 1, *, generator: GeneratorLike = None,
               params: Params = "auto") -> torch.Tensor:
    """Replace every value v by Poisson(v * c) / c."""
    work, c = _prepare("shot_noise", x, severity, params)
    gen = _as_generator(generator)
    rate = work.clamp(0.0, 1.0) * c
    if gen is None:
        counts = torch.poisson(rate)
    else:
        counts = torch.poisson(rate.to(gen.device), generator=gen).to(work.device)
    return _finish(counts / c, x)


def impulse_noise(x: torch.Tensor, severity: int = 1, *, generator: GeneratorLike = None,
                  params: Params = "auto") -> torch.Tensor:
    """Salt-and-pepper: each value independently becomes 0 or 1 (equally likely) with probability c.

    This is skimage.util.random_noise(mode="s&p") as of scikit-image 0.19; the versions that built ImageNet-C drew
    ceil(c * size / 2) positions with replacement for each of salt and pepper, a marginally lower effective rate."""
    work, c = _prepare("impulse_noise", x, severity, params)
    gen = _as_generator(generator)
    flipped = _rand(work.shape, gen, work) < c
    salt = (_rand(work.shape, gen, work) < 0.5).to(work.dtype)
    return _finish(torch.where(flipped, salt, work), x)


def defocus_blur(x: torch.Tensor, severity: int = 1, *, generator: GeneratorLike = None,
                 params: Params = "auto") -> torch.Tensor:
    """Correlate with the reference's anti-aliased disk kernel, OpenCV reflect-101 borders (cv2.filter2D)."""
    work, (radius, alias_blur) = _prepare("defocus_blur", x, severity, params)
    return _finish(_depthwise(work, _disk_kernel(radius, alias_blur), "reflect101"), x)


def gaussian_blur(x: torch.Tensor, severity: int = 1, *, generator: GeneratorLike = None,
                  params: Params = "auto") -> torch.Tensor:
    """Separable Gaussian blur as skimage.filters.gaussian (truncate 4, replicated borders), per channel."""
    work, sigma = _prepare("gaussian_blur", x, severity, params)
    return _finish(_separable(work, _scipy_gaussian_1d(sigma), "replicate"), x)


def _motion_offsets(radius: int, angle_deg: float) -> list[tuple[int, int]]:
    """(dy, dx) of each tap of the imagecorruptions line kernel, for one angle in degrees."""
    width = 2 * radius + 1
    a = np.deg2rad(angle_deg)
    point = (width * np.sin(a), width * np.cos(a))
    hypot = math.hypot(point[0], point[1])
    return [(-math.ceil(((i * point[0]) / hypot) - 0.5), -math.ceil(((i * point[1]) / hypot) - 0.5))
            for i in range(width)]


def _motion_blur(x: torch.Tensor, radius: int, sigma: float, angles: Sequence[float]) -> torch.Tensor:
    """Blur image b of x along `angles[b]` (degrees) with a one-sided Gaussian line kernel of 2 * radius + 1 taps.

    The `imagecorruptions` port of ImageMagick's MotionBlurImage: tap i has weight exp(-i^2 / 2 sigma^2)
    (normalised) and reads the image shifted by i pixels along the angle, borders replicated; taps from the first
    shift that leaves the frame on are dropped (not renormalised)."""
    b, c, h, w = x.shape
    width = 2 * radius + 1
    taps = torch.exp(-torch.arange(width, dtype=torch.float64) ** 2 / (2 * sigma ** 2))
    taps = (taps / taps.sum()).tolist()
    offsets = [_motion_offsets(radius, float(a)) for a in angles]  # [B][width] of (dy, dx)
    flat = rearrange(x, "b c h w -> b c (h w)")
    rows_base = torch.arange(h, device=x.device)
    cols_base = torch.arange(w, device=x.device)
    out = torch.zeros_like(flat)
    inside = [True] * b
    for i in range(width):
        dy = [offsets[k][i][0] for k in range(b)]
        dx = [offsets[k][i][1] for k in range(b)]
        inside = [inside[k] and abs(dy[k]) < h and abs(dx[k]) < w for k in range(b)]
        if not any(inside):
            break
        dy_t = torch.tensor(dy, device=x.device)
        dx_t = torch.tensor(dx, device=x.device)
        rows = (rows_base[None, :] - dy_t[:, None]).clamp(0, h - 1)  # out[y, x] = in[y - dy, x - dx]
        cols = (cols_base[None, :] - dx_t[:, None]).clamp(0, w - 1)
        source = rearrange(rows[:, :, None] * w + cols[:, None, :], "b h w -> b 1 (h w)").expand(b, c, h * w)
        weight = torch.tensor([taps[i] if ok else 0.0 for ok in inside], device=x.device, dtype=x.dtype)
        out = out + rearrange(weight, "b -> b 1 1") * flat.gather(2, source)
    return rearrange(out, "b c (h w) -> b c h w", h=h)


def motion_blur(x: torch.Tensor, severity: int = 1, *, generator: GeneratorLike = None,
                params: Params = "auto") -> torch.Tensor:
    """Blur along a random direction (uniform in [-45, 45] degrees per image) with a one-sided Gaussian line kernel.

    Approximates the reference, which calls ImageMagick's MagickMotionBlurImage(radius, sigma, angle) through Wand:
    this is the numpy re-implementation shipped in `imagecorruptions` (same radius/sigma per severity), in torch."""
    work, (radius, sigma) = _prepare("motion_blur", x, severity, params)
    gen = _as_generator(generator)
    if gen is None:
        u = torch.rand(work.shape[0], dtype=torch.float64)
    else:
        u = torch.rand(work.shape[0], generator=gen, device=gen.device, dtype=torch.float64)
    angles = (u * 90.0 - 45.0).tolist()
    return _finish(_motion_blur(work, radius, sigma, angles), x)


def contrast(x: torch.Tensor, severity: int = 1, *, generator: GeneratorLike = None,
             params: Params = "auto") -> torch.Tensor:
    """Pull every channel towards its per-image spatial mean: (x - mean) * c + mean."""
    work, c = _prepare("contrast", x, severity, params)
    means = work.mean(dim=(-2, -1), keepdim=True)
    return _finish((work - means) * c + means, x)


def brightness(x: torch.Tensor, severity: int = 1, *, generator: GeneratorLike = None,
               params: Params = "auto") -> torch.Tensor:
    """Add c to the HSV value channel (clipped to [0, 1]) and convert back to RGB."""
    work, c = _prepare("brightness", x, severity, params)
    hsv = rgb_to_hsv(work.clamp(0.0, 1.0))
    h, s, v = hsv.unbind(-3)
    return _finish(hsv_to_rgb(torch.stack([h, s, (v + c).clamp(0.0, 1.0)], dim=-3)), x)


def jpeg_compression(x: torch.Tensor, severity: int = 1, *, generator: GeneratorLike = None,
                     params: Params = "auto") -> torch.Tensor:
    """Round-trip every image through PIL's JPEG encoder at quality c (on the CPU; 8-bit, like the reference)."""
    work, quality = _prepare("jpeg_compression", x, severity, params)
    pixels = rearrange((work.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8), "b c h w -> b h w c").cpu().numpy()
    decoded = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image, mode="RGB").save(buffer, format="JPEG", quality=int(quality))
        buffer.seek(0)
        with Image.open(buffer) as jpeg:
            decoded.append(np.asarray(jpeg.convert("RGB")))
    out = torch.from_numpy(np.stack(decoded)).to(device=work.device, dtype=work.dtype) / 255.0
    return _finish(rearrange(out, "b h w c -> b c h w"), x)


def pixelate(x: torch.Tensor, severity: int = 1, *, generator: GeneratorLike = None,
             params: Params = "auto") -> torch.Tensor:
    """Box-downsample to int(side * c) as PIL's Image.BOX, then upsample back.

    The upsampling is PIL NEAREST for ImageNet parameters (imagecorruptions) and PIL BOX for CIFAR (make_cifar_c.py);
    the two pick the same source pixel except at exact ties."""
    work, c = _prepare("pixelate", x, severity, params)
    h, w = work.shape[-2:]
    small = _resize_box(work, max(int(h * c), 1), max(int(w * c), 1))
    if resolve_params(x, params) == "cifar":
        return _finish(_resize_box(small, h, w), x)
    rows = _pil_nearest_index(small.shape[-2], h, work.device)
    cols = _pil_nearest_index(small.shape[-1], w, work.device)
    return _finish(small.index_select(-2, rows).index_select(-1, cols), x)


Corruption = Callable[..., torch.Tensor]
CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur,
    "gaussian_blur": gaussian_blur,
    "motion_blur": motion_blur,
    "contrast": contrast,
    "brightness": brightness,
    "jpeg_compression": jpeg_compression,
    "pixelate": pixelate,
}


def _check_name(name: str) -> None:
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")


def corrupt(x: torch.Tensor, name: str, severity: int, *, generator: GeneratorLike = None,
            params: Params = "auto") -> torch.Tensor:
    """Apply corruption `name` at `severity` (1..5) to a batch x [B, 3, H, W] in [0, 1]."""
    _check_name(name)
    _check_severity(name, severity)
    return CORRUPTIONS[name](x, severity, generator=generator, params=params)


def parse_corruptions(spec: str | Sequence[str]) -> list[tuple[str, int]]:
    """Parse "gaussian_noise:3,defocus_blur" into (name, severity) pairs; a bare name (or "all") means severities
    1-5 (of every corruption), "all:3" every corruption at 3; duplicates are dropped, order kept."""
    entries = spec.split(",") if isinstance(spec, str) else list(spec)
    pairs: list[tuple[str, int]] = []
    for entry in entries:
        entry = entry.strip()
        if not entry:
            continue
        name, sep, sev_text = entry.partition(":")
        name, sev_text = name.strip(), sev_text.strip()
        names = list(CORRUPTIONS) if name == "all" else [name]
        if name != "all":
            _check_name(name)
        if sep:
            try:
                severity = int(sev_text)
            except ValueError:
                raise ValueError(f"bad severity {sev_text!r} for corruption {name!r} in {entry!r}: "
                                 f"expected an integer in 1..5") from None
            _check_severity(name, severity)
            severities: Sequence[int] = (severity,)
        else:
            severities = SEVERITIES
        for n in names:
            for s in severities:
                if (n, s) not in pairs:
                    pairs.append((n, s))
    return pairs
