"""ImageNet-C / CIFAR-10-C corruptions: contract per corruption x severity, determinism, monotonicity on dataset images,
and parity with the `imagecorruptions` package (ImageNet-C parameters) and the make_cifar_c.py formulas (CIFAR)."""

from __future__ import annotations

import io
import sys
import tarfile
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from qclip.evals.corruptions import (
    CIFAR_PARAMS,
    CORRUPTIONS,
    IMAGENET_PARAMS,
    SEVERITIES,
    _motion_blur,
    corrupt,
    hsv_to_rgb,
    parse_corruptions,
    resolve_params,
    rgb_to_hsv,
)

NAMES = list(CORRUPTIONS)
RANDOM = ["gaussian_noise", "shot_noise", "impulse_noise", "motion_blur"]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# ------------------------------------------------------------------------------- imagecorruptions, probed once

def _import_imagecorruptions() -> tuple[types.ModuleType | None, str]:
    """Import imagecorruptions; setuptools >= 81 has no pkg_resources, which it imports only to find frost images."""
    shimmed = False
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        shim = types.ModuleType("pkg_resources")
        shim.resource_filename = lambda package, path: str(Path(sys.modules[package].__file__).parent / path)
        sys.modules["pkg_resources"] = shim
        shimmed = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import imagecorruptions
        return imagecorruptions, ""
    except Exception as e:  # not installed, or broken on this numpy/scipy
        return None, f"imagecorruptions unavailable: {type(e).__name__}: {e}"
    finally:
        if shimmed:
            sys.modules.pop("pkg_resources", None)


IC, IC_MISSING = _import_imagecorruptions()


def _probe(name: str) -> str:
    """'' when imagecorruptions runs `name` here, else why not (it was written for numpy 1 / scikit-image < 0.19)."""
    if IC is None:
        return IC_MISSING
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            IC.corrupt(image, severity=1, corruption_name=name)
        return ""
    except Exception as e:
        return f"imagecorruptions.{name} crashes here: {type(e).__name__}: {e}"


PROBES = {name: _probe(name) for name in NAMES}


def _with_probe(names: list[str]) -> list:
    return [pytest.param(n, marks=pytest.mark.skip(reason=PROBES[n])) if PROBES[n] else n for n in names]


# ------------------------------------------------------------------------------------------------ dataset images

def _read_images(shard: Path, n: int) -> np.ndarray:
    """The first n `<key>.jpg` images of a gzip webdataset shard, as uint8 [n, H, W, 3]."""
    images = []
    with tarfile.open(shard, "r|*") as tar:
        for member in tar:
            if member.name.endswith(".jpg"):
                images.append(np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")))
                if len(images) == n:
                    break
    return np.stack(images)


def _to_batch(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0


def _to_gray_levels(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).double().cpu().numpy() * 255.0


@pytest.fixture(scope="module")
def cifar_u8(wds_root) -> np.ndarray:
    return _read_images(wds_root / "wds_cifar10" / "test" / "0.tar", 4)


@pytest.fixture(scope="module")
def imagenet_u8(wds_root) -> np.ndarray:
    return _read_images(wds_root / "wds_imagenet_samples" / "test" / "0.tar", 1)


@pytest.fixture(scope="module")
def parity_u8(cifar_u8, imagenet_u8) -> np.ndarray:
    """Two 224x224 frames (the size imagecorruptions' ImageNet parameters assume): the 128 px ImageNet-like sample and a
    CIFAR-10-like image of the synthetic data root, bicubic-upsampled."""
    return np.stack([np.asarray(Image.fromarray(a).resize((224, 224), Image.BICUBIC))
                     for a in (imagenet_u8[0], cifar_u8[0])])


# ------------------------------------------------------------------------------------------------ contract

@pytest.mark.parametrize("params", ["imagenet", "cifar"])
@pytest.mark.parametrize("severity", SEVERITIES)
@pytest.mark.parametrize("name", NAMES)
def test_shape_dtype_range(name, severity, params):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = corrupt(x, name, severity, generator=0, params=params)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert torch.isfinite(y).all()
    assert y.min() >= 0.0 and y.max() <= 1.0
    assert not torch.equal(y, x)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_keeps_dtype_and_device(name, dtype, device):
    x = torch.rand(2, 3, 32, 40, generator=torch.Generator().manual_seed(2)).to(device=device, dtype=dtype)
    y = corrupt(x, name, 3, generator=0)
    assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
    assert y.min() >= 0.0 and y.max() <= 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", NAMES)
def test_same_result_on_cuda(name):
    """An int seed draws on the CPU, so CPU and CUDA agree (to TF32 convolution round-off, under one gray level)."""
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    cpu = corrupt(x, name, 4, generator=7)
    gpu = corrupt(x.cuda(), name, 4, generator=7)
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, atol=3e-3, rtol=0)
    corrupt(x.cuda(), name, 4, generator=torch.Generator("cuda").manual_seed(7))  # on-device generator works too


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_given_generator(name):
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    a = corrupt(x, name, 3, generator=torch.Generator().manual_seed(11))
    b = corrupt(x, name, 3, generator=torch.Generator().manual_seed(11))
    c = corrupt(x, name, 3, generator=11)
    assert torch.equal(a, b) and torch.equal(a, c)
    d = corrupt(x, name, 3, generator=12)
    assert torch.equal(a, d) != (name in RANDOM)  # only the random corruptions depend on the seed
    corrupt(x, name, 3)  # generator=None: torch's global RNG


@pytest.mark.parametrize("name", RANDOM)
def test_images_in_a_batch_get_independent_draws(name):
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5)).repeat(2, 1, 1, 1)
    y = corrupt(x, name, 5, generator=3)
    assert not torch.equal(y[0], y[1])


# ----------------------------------------------------------------------------------------------- monotonicity

# In make_cifar_c.py motion blur severities 3 and 4 are (radius 6, sigma 2) and (8, 2): the extra taps weigh
# exp(-13^2 / 8) ~ 1e-9, so the two severities are the same blur. Only there is equality allowed.
_TIES = {("cifar", "motion_blur", 3)}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dataset", ["cifar", "imagenet"])
def test_severity_is_monotone_on_dataset_images(dataset, name, cifar_u8, imagenet_u8):
    """mean |x_c - x| increases with severity: 4 CIFAR-10-like 32 px test images (CIFAR parameters, by "auto") and one
    128 px ImageNet-like sample (ImageNet parameters, by "auto"), JPEGs of the synthetic data root."""
    x = _to_batch(cifar_u8 if dataset == "cifar" else imagenet_u8)
    assert resolve_params(x) == dataset
    dist = [(corrupt(x, name, s, generator=0) - x).abs().mean().item() for s in SEVERITIES]
    for s in SEVERITIES[:-1]:
        if (dataset, name, s) in _TIES:
            assert dist[s] >= dist[s - 1] * (1 - 1e-3), dist
        else:
            assert dist[s] > dist[s - 1], dist


# ---------------------------------------------------------------------------- parity: imagecorruptions (ImageNet-C)

def _reference(name: str, image: np.ndarray, severity: int) -> np.ndarray:
    """imagecorruptions' own function on a PIL image, as float gray levels (its `corrupt()` truncates to uint8)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = IC.corruptions.__dict__[name](Image.fromarray(image), severity)
    return np.asarray(out, dtype=np.float64)


# max |ours - reference| in gray levels (0..255) on uint8 224x224 inputs; `round` rounds ours to uint8 first
_DETERMINISTIC_TOL = {
    "contrast": dict(max_abs=0.01, round=False),  # float32 vs float64 round-off only
    "brightness": dict(max_abs=0.01, round=False),  # torch HSV vs skimage rgb2hsv/hsv2rgb
    "defocus_blur": dict(max_abs=0.01, round=False),  # torch conv vs cv2.filter2D (reflect-101 border)
    "jpeg_compression": dict(max_abs=0.0, round=True),  # same PIL encoder and decoder: identical
    # PIL's BOX resize works in 8-bit fixed point and rounds between its horizontal and vertical passes
    "pixelate": dict(max_abs=1.0, mean_abs=0.5, round=True),
}


@pytest.mark.parametrize("name", _with_probe(list(_DETERMINISTIC_TOL)))
def test_parity_deterministic(name, parity_u8):
    tol = _DETERMINISTIC_TOL[name]
    for severity in SEVERITIES:
        ours = _to_gray_levels(corrupt(_to_batch(parity_u8), name, severity, params="imagenet"))
        if tol["round"]:
            ours = np.round(ours)
        ref = np.stack([_reference(name, image, severity) for image in parity_u8])
        diff = np.abs(ours - ref)
        assert diff.max() <= tol["max_abs"], (severity, diff.max())
        assert diff.mean() <= tol.get("mean_abs", tol["max_abs"]), (severity, diff.mean())


def test_parity_gaussian_blur(parity_u8):
    """imagecorruptions' gaussian_blur passes `multichannel=True`, which scikit-image 0.19 renamed (channel_axis)
    and later removed; compare with the reference's exact call under the new keyword instead (max 0.01 gray)."""
    skimage_filters = pytest.importorskip("skimage.filters")
    for severity, sigma in zip(SEVERITIES, IMAGENET_PARAMS["gaussian_blur"]):
        ours = _to_gray_levels(corrupt(_to_batch(parity_u8), "gaussian_blur", severity, params="imagenet"))
        ref = np.stack([np.clip(skimage_filters.gaussian(image / 255.0, sigma=sigma, channel_axis=-1), 0, 1) * 255
                        for image in parity_u8])
        assert np.abs(ours - ref).max() <= 0.01, severity


@pytest.mark.skipif(bool(PROBES["gaussian_blur"]), reason=PROBES["gaussian_blur"] or "")
def test_parity_gaussian_blur_imagecorruptions(parity_u8):
    for severity in SEVERITIES:
        ours = _to_gray_levels(corrupt(_to_batch(parity_u8), "gaussian_blur", severity, params="imagenet"))
        ref = np.stack([_reference("gaussian_blur", image, severity) for image in parity_u8])
        assert np.abs(ours - ref).max() <= 0.01, severity


@pytest.mark.parametrize("name", _with_probe(["gaussian_noise", "shot_noise", "impulse_noise"]))
def test_parity_noise_statistics(name, parity_u8):
    """Difference images D = corrupted - clean (gray levels, 2 x 224 x 224 x 3 values): std(D) and mean|D| within 10%
    of the reference's, mean(D) within 10% of the reference's std(D) (the mean itself is near 0 for some images)."""
    clean = parity_u8.astype(np.float64)
    for severity in SEVERITIES:
        ours = _to_gray_levels(corrupt(_to_batch(parity_u8), name, severity, generator=severity, params="imagenet"))
        np.random.seed(severity)
        ref = np.stack([_reference(name, image, severity) for image in parity_u8])
        d_ours, d_ref = ours - clean, ref - clean
        scale = d_ref.std()
        assert abs(d_ours.std() - scale) <= 0.1 * scale, (severity, d_ours.std(), scale)
        assert abs(np.abs(d_ours).mean() - np.abs(d_ref).mean()) <= 0.1 * np.abs(d_ref).mean(), severity
        assert abs(d_ours.mean() - d_ref.mean()) <= 0.1 * scale, (severity, d_ours.mean(), d_ref.mean())


@pytest.mark.skipif(IC is None, reason=IC_MISSING)
@pytest.mark.parametrize("radius,sigma,side", [(10, 3, 96), (20, 15, 96), (9, 2.5, 32), (20, 15, 32)])
def test_motion_blur_kernel_matches_imagecorruptions(radius, sigma, side, parity_u8):
    """At a fixed angle our line kernel is imagecorruptions' `_motion_blur` numpy port of ImageMagick (1e-3 gray);
    on 32 px frames the radius-20 kernel's later taps leave the frame and are dropped, as there."""
    image = np.ascontiguousarray(parity_u8[0, 64:64 + side, 64:64 + side])
    x = _to_batch(image[None]).double()
    for angle in (-45.0, -30.3, 0.0, 12.7, 45.0):
        ours = _to_gray_levels(_motion_blur(x, radius, sigma, [angle]))[0]
        ref = IC.corruptions._motion_blur(image, radius=radius, sigma=sigma, angle=angle)
        assert np.abs(ours - ref).max() <= 1e-3, angle


def _smoothness(images: np.ndarray) -> tuple[float, float]:
    """(mean |first difference|, mean |4-neighbour Laplacian|) over a stack of HxWx3 images."""
    grad = np.abs(np.diff(images, axis=1)).mean() + np.abs(np.diff(images, axis=2)).mean()
    c = images[:, 1:-1, 1:-1]
    lap = np.abs(4 * c - images[:, :-2, 1:-1] - images[:, 2:, 1:-1] - images[:, 1:-1, :-2] - images[:, 1:-1, 2:])
    return grad, lap.mean()


@pytest.mark.parametrize("name", _with_probe(["motion_blur"]))
def test_parity_motion_blur_smoothness(name, parity_u8):
    """The angle is random in both, so compare only statistics: over 8 draws of one image, the gradient and Laplacian
    energy left after blurring (relative to the clean image) agree within 10% of the reference's."""
    image = parity_u8[0]
    clean = _smoothness(image[None].astype(np.float64))
    x = _to_batch(np.repeat(image[None], 8, axis=0))
    for severity in SEVERITIES:
        ours = _smoothness(_to_gray_levels(corrupt(x, name, severity, generator=severity, params="imagenet")))
        np.random.seed(severity)
        ref = _smoothness(np.stack([_reference(name, image, severity) for _ in range(8)]))
        for o, r, c in zip(ours, ref, clean):
            assert abs(o / c - r / c) <= 0.1 * (r / c), (severity, o / c, r / c)


# ------------------------------------------------------------------------------ parity: make_cifar_c.py formulas

def _cifar_reference(name: str, image: np.ndarray, severity: int) -> np.ndarray:
    """make_cifar_c.py's deterministic corruptions, re-run with its own libraries (float gray levels)."""
    c = CIFAR_PARAMS[name][severity - 1]
    x = image / 255.0
    if name == "contrast":
        means = x.mean(axis=(0, 1), keepdims=True)
        return np.clip((x - means) * c + means, 0, 1) * 255
    if name == "brightness":
        import skimage.color
        hsv = skimage.color.rgb2hsv(x)
        hsv[:, :, 2] = np.clip(hsv[:, :, 2] + c, 0, 1)
        return np.clip(skimage.color.hsv2rgb(hsv), 0, 1) * 255
    if name == "gaussian_blur":
        import skimage.filters
        return np.clip(skimage.filters.gaussian(x, sigma=c, channel_axis=-1), 0, 1) * 255
    if name == "defocus_blur":
        import cv2
        kernel = IC.corruptions.disk(radius=c[0], alias_blur=c[1])  # byte-for-byte make_cifar_c.py's disk()
        return np.clip(np.stack([cv2.filter2D(x[:, :, d], -1, kernel) for d in range(3)], axis=-1), 0, 1) * 255
    pil = Image.fromarray(image)
    if name == "jpeg_compression":
        buffer = io.BytesIO()
        pil.save(buffer, "JPEG", quality=c)
        return np.asarray(Image.open(buffer), dtype=np.float64)
    if name == "pixelate":
        h, w = image.shape[:2]
        small = pil.resize((int(w * c), int(h * c)), Image.BOX)
        return np.asarray(small.resize((w, h), Image.BOX), dtype=np.float64)
    raise KeyError(name)


_CIFAR_TOL = {"contrast": (0.01, False), "brightness": (0.01, False), "gaussian_blur": (0.01, False),
              "defocus_blur": (0.01, False), "jpeg_compression": (0.0, True), "pixelate": (1.0, True)}


@pytest.mark.skipif(IC is None, reason=IC_MISSING)
@pytest.mark.parametrize("name", list(_CIFAR_TOL))
def test_parity_cifar_formulas(name, cifar_u8):
    """CIFAR-10-C parameters on 4 CIFAR-10-like 32 px JPEGs, max |diff| in gray levels as for the ImageNet-C parity."""
    max_abs, rounded = _CIFAR_TOL[name]
    for severity in SEVERITIES:
        ours = _to_gray_levels(corrupt(_to_batch(cifar_u8), name, severity, params="cifar"))
        if rounded:
            ours = np.round(ours)
        ref = np.stack([_cifar_reference(name, image, severity) for image in cifar_u8])
        assert np.abs(ours - ref).max() <= max_abs, severity


def test_hsv_matches_skimage():
    color = pytest.importorskip("skimage.color")
    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.float64) / 255.0
    rgb[:8] = rgb[:8, :, :1]  # greys: hue and saturation 0
    rgb[8:16, :, 2] = rgb[8:16, :, 0]  # red == blue maxima: ties
    ours = rgb_to_hsv(torch.from_numpy(rgb).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(ours, color.rgb2hsv(rgb), atol=1e-12)
    back = hsv_to_rgb(torch.from_numpy(ours).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(back, color.hsv2rgb(ours), atol=1e-12)
    np.testing.assert_allclose(back, rgb, atol=1e-12)


# ------------------------------------------------------------------------------------------------------- API

def test_corrupt_rejects_bad_name_and_severity():
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="fog"):
        corrupt(x, "fog", 1)
    for bad in (0, 6, 2.0, True, "3"):
        with pytest.raises(ValueError, match="contrast.*1..5"):
            corrupt(x, "contrast", bad)
    with pytest.raises(ValueError, match="params"):
        corrupt(x, "contrast", 1, params="cifar10")
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        corrupt(x[0], "contrast", 1)
    with pytest.raises(ValueError, match="floating"):
        corrupt((x * 255).to(torch.uint8), "contrast", 1)


def test_auto_params_by_size():
    assert resolve_params(torch.zeros(1, 3, 32, 32)) == "cifar"
    assert resolve_params(torch.zeros(1, 3, 64, 48)) == "cifar"
    assert resolve_params(torch.zeros(1, 3, 65, 32)) == "imagenet"
    assert resolve_params(torch.zeros(1, 3, 224, 224), "cifar") == "cifar"
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(corrupt(x, "contrast", 2), corrupt(x, "contrast", 2, params="cifar"))
    assert not torch.equal(corrupt(x, "contrast", 2), corrupt(x, "contrast", 2, params="imagenet"))


def test_parameter_tables_cover_every_corruption():
    for table in (IMAGENET_PARAMS, CIFAR_PARAMS):
        assert set(table) == set(CORRUPTIONS)
        assert all(len(v) == len(SEVERITIES) for v in table.values())


def test_parse_corruptions():
    assert parse_corruptions("gaussian_noise:3,defocus_blur:3") == [("gaussian_noise", 3), ("defocus_blur", 3)]
    assert parse_corruptions(" contrast ") == [("contrast", s) for s in SEVERITIES]
    assert parse_corruptions("all") == [(n, s) for n in NAMES for s in SEVERITIES]
    assert parse_corruptions("all:2") == [(n, 2) for n in NAMES]
    assert parse_corruptions(["pixelate:1", "pixelate:1", "pixelate:5"]) == [("pixelate", 1), ("pixelate", 5)]
    assert parse_corruptions("") == []
    with pytest.raises(ValueError, match="zoom_blur"):
        parse_corruptions("gaussian_noise:1,zoom_blur:2")
    with pytest.raises(ValueError, match="contrast"):
        parse_corruptions("contrast:6")
    with pytest.raises(ValueError, match="'x'"):
        parse_corruptions("contrast:x")
