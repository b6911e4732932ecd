"""The shared preprocessing helper against the authors' libraries (NumPy, PIL)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from models.card import normalize_crops, resize_like_pil_bicubic

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _crops(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_totensor_normalize_rgb() -> None:
    crops = _crops((2, 3, 32, 32, 3))
    out = normalize_crops(crops, crop_size=32, input_size=32, colour_order="RGB", scale=255.0,
                          mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert out.shape == (2, 3, 3, 32, 32) and out.dtype == torch.float32
    ref = (crops.astype(np.float32) / 255.0 - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    np.testing.assert_allclose(out.numpy(), ref.transpose(0, 1, 4, 2, 3), atol=1e-6)


def test_bgr_raw_range() -> None:
    crops = _crops((4, 16, 16, 3), 1)
    out = normalize_crops(torch.from_numpy(crops), crop_size=16, input_size=16, colour_order="BGR", scale=1.0,
                          mean=None, std=None)
    np.testing.assert_array_equal(out.numpy(), crops[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32))


@pytest.mark.parametrize("backend", ["torch", "pil", "auto"])
@pytest.mark.parametrize("src,dst", [(256, 224), (224, 256), (37, 16)])
def test_resize_is_bit_exact_with_pil_bicubic(src: int, dst: int, backend: str) -> None:
    crops = _crops((2, src, src, 3), 3)
    ref = np.stack([np.asarray(Image.fromarray(c).resize((dst, dst), Image.BICUBIC)) for c in crops]).astype(np.float32)
    ours = resize_like_pil_bicubic(torch.from_numpy(crops.copy()).permute(0, 3, 1, 2).float(), dst,
                                   backend=backend)  # type: ignore[arg-type]
    assert ours.dtype == torch.float32 and ours.shape == (2, 3, dst, dst)
    np.testing.assert_array_equal(ours.permute(0, 2, 3, 1).numpy(), ref)


def test_bad_crops_are_refused() -> None:
    with pytest.raises(TypeError, match="uint8"):
        normalize_crops(np.zeros((1, 8, 8, 3), np.float32), crop_size=8, input_size=8, colour_order="RGB",
                        scale=255.0, mean=None, std=None)
    with pytest.raises(ValueError, match="8x8"):
        normalize_crops(np.zeros((1, 9, 9, 3), np.uint8), crop_size=8, input_size=8, colour_order="RGB",
                        scale=255.0, mean=None, std=None)
    with pytest.raises(ValueError, match="RGB"):
        normalize_crops(np.zeros((1, 8, 8, 4), np.uint8), crop_size=8, input_size=8, colour_order="RGB",
                        scale=255.0, mean=None, std=None)
