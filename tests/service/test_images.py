"""Image preprocessing: the service's pixels equal torchvision's Resize + CenterCrop on the PIL
image, pixel for pixel, and the served net's normalisation equals ToTensor + Normalize; only PNG,
JPEG and WebP are decoded; an image whose resize would be huge is refused before it is decoded."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, features
from torchvision import transforms

from reparam_core.deploy import PixelNormaliser
from service.errors import BadInput, UnsupportedMedia
from service.images import image_to_pixels, images_to_pixels

ROOT = Path(__file__).resolve().parents[2]
PREPROCESS = {"resize": 40, "crop": 32, "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.3, 0.25)}
INTERPOLATIONS = ["nearest", "bilinear", "bicubic", "box", "hamming", "lanczos"]
# Extreme and odd aspect ratios, images smaller than the crop, and sizes already at the resize.
SIZES = [(1, 300), (300, 1), (5, 7), (7, 5), (1, 1), (40, 40), (40, 57), (57, 40), (605, 400), (400, 605)]
SIZES += [(121, 39), (39, 121), (33, 1000), (1000, 33), (241, 240), (240, 241), (47, 30), (30, 47), (61, 57)]


def encoded(mode: str, width: int = 50, height: int = 60, fmt: str = "PNG", seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


def plain_png(width: int, height: int) -> bytes:
    """A one-colour PNG: a few hundred bytes, whatever its size."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 140, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def torchvision_pixels(data: bytes, resize: int, crop: int, interpolation: str, channels: int) -> np.ndarray:
    """What a torchvision/timm eval pipeline feeds ToTensor: Resize(resize) + CenterCrop(crop)."""
    image = Image.open(io.BytesIO(data)).convert("RGB" if channels == 3 else "L")
    mode = transforms.InterpolationMode(interpolation)
    resized = transforms.Compose([transforms.Resize(resize, interpolation=mode), transforms.CenterCrop(crop)])
    return np.array(resized(image)).reshape(crop, crop, channels)


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize(("resize", "crop"), [(40, 32), (40, 40), (9, 8)])
def test_pixels_equal_torchvision_resize_and_centre_crop(interpolation: str, resize: int, crop: int) -> None:
    differ = []
    for seed, (width, height) in enumerate(SIZES):
        data = encoded("RGB", width, height, seed=seed)
        pixels = image_to_pixels(data, {"resize": resize, "crop": crop, "interpolation": interpolation}, 3)
        assert pixels.shape == (1, crop, crop, 3) and pixels.dtype == torch.uint8
        if not np.array_equal(pixels[0].numpy(), torchvision_pixels(data, resize, crop, interpolation, 3)):
            differ.append(f"{width}x{height}")
    assert not differ, f"differ from torchvision: {differ}"


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_photo_sizes_at_imagenet_settings_equal_torchvision(interpolation: str) -> None:
    """Resize(256) + CenterCrop(224), as /predict meets it: a square JPEG, landscape and portrait
    photos, odd sizes, in colour and in grey."""
    for seed, (width, height) in enumerate([(512, 512), (451, 300), (300, 451), (640, 480), (333, 257)]):
        data = encoded("RGB", width, height, fmt="JPEG", seed=seed)
        settings = {"resize": 256, "crop": 224, "interpolation": interpolation}
        for channels in (3, 1):
            pixels = image_to_pixels(data, settings, channels)[0].numpy()
            expected = torchvision_pixels(data, 256, 224, interpolation, channels)
            assert np.array_equal(pixels, expected), f"{width}x{height}, {channels} channel(s)"


def test_several_images_fill_one_batch() -> None:
    images = [encoded("RGB", 61, 45, seed=1), encoded("RGB", 45, 61, fmt="JPEG", seed=2)]
    batch = images_to_pixels(images, PREPROCESS, 3)
    assert batch.shape == (2, 32, 32, 3) and batch.is_contiguous()
    for row, data in zip(batch.numpy(), images, strict=True):
        assert np.array_equal(row, torchvision_pixels(data, 40, 32, "bilinear", 3))


def test_draft_decodes_large_jpegs_at_reduced_scale_and_leaves_the_others_exact() -> None:
    """REPARAM_JPEG_DRAFT: a JPEG at least twice the resize is decoded by libjpeg at a reduced scale
    (close to torchvision's pixels, not equal); smaller JPEGs and other formats stay exact."""
    settings = {"resize": 256, "crop": 224}
    photo = io.BytesIO()
    gradient = np.linspace(0, 255, 512, dtype=np.float64)
    smooth = np.stack(
        [
            np.add.outer(gradient, gradient) / 2,
            np.add.outer(gradient, -gradient) / 2 + 128,
            np.add.outer(-gradient, gradient) / 2 + 128,
        ],
        axis=2,
    ).astype(np.uint8)
    Image.fromarray(smooth).save(photo, format="JPEG", quality=90)
    large = photo.getvalue()
    drafted = image_to_pixels(large, settings, 3, draft=True)[0].numpy().astype(int)
    exact = torchvision_pixels(large, 256, 224, "bilinear", 3).astype(int)
    assert not np.array_equal(drafted, exact)
    assert np.abs(drafted - exact).mean() < 1.0 and np.abs(drafted - exact).max() <= 8
    for data in (encoded("RGB", 500, 300, fmt="JPEG"), encoded("RGB", 600, 600, fmt="PNG")):
        pixels = image_to_pixels(data, settings, 3, draft=True)[0].numpy()
        assert np.array_equal(pixels, torchvision_pixels(data, 256, 224, "bilinear", 3))


@pytest.mark.parametrize(
    ("mode", "channels", "fmt"),
    [("RGB", 3, "PNG"), ("RGBA", 3, "PNG"), ("P", 3, "PNG"), ("L", 1, "PNG"), ("RGB", 3, "JPEG")],
)
def test_normalised_input_equals_torchvision_to_tensor_and_normalize(
    mode: str, channels: int, fmt: str
) -> None:
    data = encoded(mode, fmt=fmt)
    tensor = PixelNormaliser(PREPROCESS, channels)(image_to_pixels(data, PREPROCESS, channels))
    assert tensor.shape == (1, channels, 32, 32) and tensor.dtype == torch.float32
    assert tensor.is_contiguous(memory_format=torch.channels_last)  # what the served nets take as is
    pixels = torchvision_pixels(data, 40, 32, "bilinear", channels)
    mean, std = PREPROCESS["mean"][:channels], PREPROCESS["std"][:channels]
    expected = transforms.Normalize(mean, std)(transforms.ToTensor()(pixels))
    assert (tensor[0] - expected).abs().max().item() < 1e-6


def test_stored_specs_without_the_new_fields_serve_as_torchvision_would() -> None:
    """A spec stored before interpolation existed is bilinear; one whose crop exceeds its resize
    (no longer accepted in new specs) is zero-padded by CenterCrop, as torchvision does."""
    data = encoded("RGB", 61, 45)
    legacy = image_to_pixels(data, {"resize": 40, "crop": 32}, 3)[0].numpy()
    assert np.array_equal(legacy, torchvision_pixels(data, 40, 32, "bilinear", 3))
    padded = image_to_pixels(data, {"resize": 30, "crop": 33}, 3)[0].numpy()
    assert np.array_equal(padded, torchvision_pixels(data, 30, 33, "bilinear", 3))
    assert padded[0].max() == 0  # the padding row


def test_the_content_decides_and_only_png_jpeg_and_webp_are_decoded() -> None:
    for fmt in ["TIFF", "GIF", "ICO", "PCX", "PPM", "TGA", "BMP", "EPS", "SGI", "JPEG2000"]:
        data = encoded("RGB", fmt=fmt)
        with pytest.raises(UnsupportedMedia, match="not PNG, JPEG or WebP") as refused:
            image_to_pixels(data, PREPROCESS, 3)
        assert "(as image/png, image/jpeg or image/webp)" in refused.value.detail, fmt
    for data in [b"8BPS\x00\x01" + bytes(64), b"not an image", b""]:  # a PSD header (Pillow reads PSD)
        with pytest.raises(UnsupportedMedia):
            image_to_pixels(data, PREPROCESS, 3)


def test_webp_is_decoded() -> None:
    assert features.check("webp"), "this Pillow has no WebP support"
    data = encoded("RGB", 61, 45, fmt="WEBP")
    pixels = image_to_pixels(data, PREPROCESS, 3)[0].numpy()
    assert np.array_equal(pixels, torchvision_pixels(data, 40, 32, "bilinear", 3))


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + kind + payload + zlib.crc32(kind + payload).to_bytes(4, "big")


def test_undecodable_and_truncated_images_are_bad_input() -> None:
    for fmt in ["PNG", "JPEG", "WEBP"]:
        data = encoded("RGB", fmt=fmt)
        for broken in [data[:40], data[: len(data) // 2], data[:16] + bytes(len(data) - 16)]:
            with pytest.raises(BadInput, match=f"cannot decode as {fmt}"):
                image_to_pixels(broken, PREPROCESS, 3)
    png = encoded("RGB")
    bomb = png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(bytes(20 * 2**20)))  # 20 MiB of text
    with pytest.raises(BadInput, match="cannot decode as PNG"):
        image_to_pixels(png[:33] + bomb + png[33:], PREPROCESS, 3)


def test_a_resize_past_the_limit_is_refused_with_its_sizes() -> None:
    with pytest.raises(BadInput, match=r"1x30000 pixels: its resize to 256x7680000 is over the limit"):
        image_to_pixels(plain_png(1, 30000), {"resize": 256, "crop": 224}, 3)
    with pytest.raises(BadInput, match=r"30000x1 pixels: its resize to 7680000x256 is over the limit"):
        image_to_pixels(plain_png(30000, 1), {"resize": 256, "crop": 224}, 3)
    assert image_to_pixels(plain_png(1, 500), {"resize": 256, "crop": 224}, 3).shape == (1, 224, 224, 3)


MEMORY_PROBE = """
import base64, resource, sys
from service.errors import BadInput
from service.images import image_to_pixels, images_to_pixels

def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

image_to_pixels(base64.b64decode(sys.argv[1]), {"resize": 256, "crop": 224}, 3)  # warm: a 300x200 image
with open("/proc/self/status") as status:
    held = next(int(line.split()[1]) for line in status if line.startswith("VmSize:")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (held + 1536 * 2**20, resource.RLIM_INFINITY))
before = peak_mib()
try:
    image_to_pixels(base64.b64decode(sys.argv[2]), {"resize": 256, "crop": 224}, 3)
    print("answered")
except BadInput as exc:
    print(exc.detail)
print(peak_mib() - before)
"""


def test_a_tall_thin_png_is_refused_with_little_memory() -> None:
    """The audit's 196-byte 1x30000 PNG: a torchvision-exact resize would be 256x7680000 pixels
    (7.9 GB in Pillow) and got the service OOM-killed. Measured in a fresh process whose address
    space is capped 1.5 GiB above what it holds before the call, so that a regression fails
    instead of taking the machine's memory."""
    thin, warm = plain_png(1, 30000), plain_png(300, 200)
    assert len(thin) < 1000
    images = [base64.b64encode(data).decode() for data in (warm, thin)]
    command = [sys.executable, "-c", MEMORY_PROBE, *images]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    detail, growth = result.stdout.strip().splitlines()
    assert "1x30000 pixels: its resize to 256x7680000 is over the limit" in detail
    assert float(growth) < 16, f"peak memory grew by {growth} MiB"
