"""Dynamic-MNIST data: digits on a larger canvas, at the centre ("static") or anywhere ("dynamic").

Two sources of digits:

* ``digits`` — scikit-learn's 8x8 handwritten digits (1,797 images, shipped with the
  package, no download), split 80/20 with a fixed seed.
* ``mnist`` — the MNIST IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, optionally ``.gz``) in a folder
  the user already has.

The canvas is three digits wide (8 -> 24, 28 -> 84), so a digit can sit anywhere in a
3x3-digit area.
"""
from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch

CANVAS_FACTOR = 3
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass
class Digits:
    """Digit images in [0, 1] and their labels.

    train_images: (N_train, S, S) float32, train_labels: (N_train,) int64,
    test_images: (N_test, S, S) float32, test_labels: (N_test,) int64; S = digit side.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: str

    @property
    def digit_size(self) -> int:
        """S, the side of one digit image."""
        return self.train_images.shape[-1]

    @property
    def canvas_size(self) -> int:
        """The canvas side, three digits wide."""
        return CANVAS_FACTOR * self.digit_size


def load_sklearn_digits(seed: int = 0, test_fraction: float = 0.2) -> Digits:
    """scikit-learn's 8x8 digits (values 0..16 scaled to [0, 1]), split with a fixed seed."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise RuntimeError("the demo's default data set is scikit-learn's digits: pip install scikit-learn "
                           "(or install this package with the [demo] extra), or pass --data mnist --root DIR "
                           "with the MNIST IDX files") from e
    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(labels)))
    test, train = order[:n_test], order[n_test:]
    return Digits(images[train], labels[train], images[test], labels[test], "scikit-learn digits 8x8")


def _open_idx(root: str, name: str):
    for candidate in (name, name + ".gz", name.replace("-idx", ".idx")):
        path = os.path.join(root, candidate)
        if os.path.exists(path):
            return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")
    raise FileNotFoundError(f"--root {root!r} has no {name} (or {name}.gz); the MNIST IDX files are "
                            f"{', '.join(MNIST_FILES.values())}")


def read_idx(root: str, name: str) -> np.ndarray:
    """Reads one IDX file (unsigned-byte data): (N,) labels or (N, rows, cols) images."""
    with _open_idx(root, name) as f:
        magic = f.read(4)
        if len(magic) != 4 or magic[:2] != b"\x00\x00" or magic[2] != 0x08:
            raise ValueError(f"{name} in {root!r} is not an unsigned-byte IDX file (magic {magic.hex()})")
        dims = struct.unpack(f">{magic[3]}I", f.read(4 * magic[3]))
        data = np.frombuffer(f.read(), dtype=np.uint8)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{name} in {root!r} is truncated: header says {dims}, found {data.size} bytes")
    return data.reshape(dims)


def load_mnist(root: str) -> Digits:
    """MNIST from IDX files in ``root`` (28x28, values scaled to [0, 1])."""
    arrays = {key: read_idx(root, name) for key, name in MNIST_FILES.items()}
    for split in ("train", "test"):
        if arrays[f"{split}_images"].shape[0] != arrays[f"{split}_labels"].shape[0]:
            raise ValueError(f"MNIST {split} images and labels differ in count: "
                             f"{arrays[f'{split}_images'].shape[0]} vs {arrays[f'{split}_labels'].shape[0]}")
    images = {k: torch.from_numpy(v.astype(np.float32) / 255.0) for k, v in arrays.items() if "images" in k}
    labels = {k: torch.from_numpy(v.astype(np.int64)) for k, v in arrays.items() if "labels" in k}
    return Digits(images["train_images"], labels["train_labels"], images["test_images"], labels["test_labels"],
                  f"MNIST IDX files in {root}")


def centre_positions(n: int, digit: int, canvas: int) -> torch.Tensor:
    """(n, 2) top-left corners that centre the digit."""
    return torch.full((n, 2), (canvas - digit) // 2, dtype=torch.long)


def random_positions(n: int, digit: int, canvas: int, seed: int) -> torch.Tensor:
    """(n, 2) top-left corners drawn uniformly over the canvas, with a fixed seed."""
    return torch.randint(0, canvas - digit + 1, (n, 2), generator=torch.Generator().manual_seed(seed))


def aligned_positions(n: int, digit: int, canvas: int, step: int, seed: int) -> torch.Tensor:
    """(n, 2) random top-left corners that move the centred digit by whole multiples of ``step``."""
    centre = (canvas - digit) // 2
    reach = centre // step  # whole steps that keep the digit on the canvas
    moves = torch.randint(-reach, reach + 1, (n, 2), generator=torch.Generator().manual_seed(seed))
    return centre + step * moves


def place(images: torch.Tensor, positions: torch.Tensor, canvas: int) -> torch.Tensor:
    """Pastes (N, S, S) digits at (N, 2) top-left corners of blank canvases -> (N, 1, canvas, canvas)."""
    n, s = images.shape[0], images.shape[-1]
    out = images.new_zeros(n, 1, canvas, canvas)
    rows = positions[:, 0, None] + torch.arange(s)  # (N, S)
    cols = positions[:, 1, None] + torch.arange(s)
    out[torch.arange(n)[:, None, None], 0, rows[:, :, None], cols[:, None, :]] = images
    return out


@dataclass
class DynamicMNIST:
    """The sets of the experiment, each (N, 1, canvas, canvas) images and (N,) labels.

    test_aligned moves the test digits by whole patches (``patch`` pixels), where a
    relative-position model sees exactly translated tokens.
    """

    train: Tuple[torch.Tensor, torch.Tensor]
    test_static: Tuple[torch.Tensor, torch.Tensor]
    test_dynamic: Tuple[torch.Tensor, torch.Tensor]
    test_aligned: Tuple[torch.Tensor, torch.Tensor]
    digit_size: int
    canvas_size: int
    source: str


def build(digits: Digits, patch: int, seed: int = 0, limit_train: Optional[int] = None,
          limit_test: Optional[int] = None) -> DynamicMNIST:
    """Static training set; static, dynamic and patch-aligned dynamic test sets (the same test digits, moved)."""
    s, c = digits.digit_size, digits.canvas_size
    train_x, train_y = digits.train_images[:limit_train], digits.train_labels[:limit_train]
    test_x, test_y = digits.test_images[:limit_test], digits.test_labels[:limit_test]
    return DynamicMNIST(
        train=(place(train_x, centre_positions(len(train_x), s, c), c), train_y),
        test_static=(place(test_x, centre_positions(len(test_x), s, c), c), test_y),
        test_dynamic=(place(test_x, random_positions(len(test_x), s, c, seed + 1), c), test_y),
        test_aligned=(place(test_x, aligned_positions(len(test_x), s, c, patch, seed + 2), c), test_y),
        digit_size=s, canvas_size=c, source=digits.source)
