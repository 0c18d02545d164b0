"""Train and eval pipelines: shapes, determinism, strength 0, and the unsharp mask."""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest
import torch

from sketchtune.config import AugConfig
from sketchtune.transforms import Unsharp, build_eval_transform, build_train_transform
from tests.data_fixtures import sketch


@pytest.fixture
def image() -> np.ndarray:
    return np.ascontiguousarray(sketch(3, 48, colour=True)[..., ::-1])  # (48, 48, 3) RGB


@pytest.mark.parametrize("size", [32, 64])
def test_train_and_eval_transform_shapes_and_dtype(image, size):
    for tf in (build_train_transform(AugConfig(strength=2.0), size), build_eval_transform(size)):
        for _ in range(5):
            x = tf(image=image)["image"]
            assert isinstance(x, torch.Tensor)
            assert x.shape == (3, size, size) and x.dtype == torch.float32


def test_eval_transform_is_deterministic(image):
    tf = build_eval_transform(40)
    a, b = tf(image=image)["image"], tf(image=image)["image"]
    assert torch.equal(a, b)
    # Normalize with ImageNet statistics: white paper maps to (1 - mean) / std.
    white = tf(image=np.full((40, 40, 3), 255, np.uint8))["image"]
    torch.testing.assert_close(white[:, 0, 0], torch.tensor([2.2489, 2.4286, 2.6400]),
                               atol=1e-3, rtol=0)


def test_train_transform_strength_zero_equals_eval(image):
    train = build_train_transform(AugConfig(strength=0.0), 48)
    want = build_eval_transform(48)(image=image)["image"]
    for _ in range(5):
        assert torch.equal(train(image=image)["image"], want)


def test_train_transform_augments_at_full_strength(image):
    tf = build_train_transform(AugConfig(), 48)
    outs = [tf(image=image)["image"] for _ in range(8)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_train_transform_pickles(image):
    tf = pickle.loads(pickle.dumps(build_train_transform(AugConfig(), 32)))
    assert tf(image=image)["image"].shape == (3, 32, 32)


def edge() -> np.ndarray:
    img = np.full((21, 21, 3), 200, np.uint8)
    img[:, :10] = 60  # a dark stroke edge
    return img


def test_unsharp_amount_zero_is_identity():
    img = edge()
    np.testing.assert_array_equal(Unsharp(amount=0.0, p=1.0)(image=img)["image"], img)


def test_unsharp_increases_contrast_across_an_edge():
    img = edge()
    out = Unsharp(kernel=7, sigma=1.5, amount=1.5, p=1.0)(image=img)["image"]
    assert out.dtype == np.uint8 and out.shape == img.shape
    # Dark side darker, light side lighter next to the edge; far from it, unchanged.
    assert out[10, 9, 0] < img[10, 9, 0] and out[10, 10, 0] > img[10, 10, 0]
    assert int(out[10, 10, 0]) - int(out[10, 9, 0]) > int(img[10, 10, 0]) - int(img[10, 9, 0])
    np.testing.assert_array_equal(out[:, 0], img[:, 0])
    np.testing.assert_array_equal(out[:, 20], img[:, 20])


def test_unsharp_threshold_keeps_small_differences():
    img = edge()
    img[:, 15] = 205  # a faint line: |image - blurred| stays small
    out = Unsharp(amount=1.5, threshold=20.0, p=1.0)(image=img)["image"]
    assert out[10, 15, 0] == 205 and out[10, 9, 0] < 60


def test_unsharp_fast_path_matches_formula(image):
    # threshold 0 takes cv2.addWeighted; the formula in float, rounded, must agree to 1 level.
    out = Unsharp(kernel=7, sigma=1.5, amount=1.5, p=1.0)(image=image)["image"]
    src = image.astype(np.float32)
    blurred = cv2.GaussianBlur(src, (7, 7), 1.5)
    want = np.clip(np.rint(src + 1.5 * (src - blurred)), 0, 255)
    assert np.abs(out.astype(np.float32) - want).max() <= 1
