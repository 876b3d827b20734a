"""The image task of :mod:`gradflow.tasks`: scikit-learn's bundled 8×8 digits, or a generated
digit-like stand-in with the same shapes (package-private; the names are re-exported there)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from gradflow import _checks

__all__ = ["ImageData", "digits", "synthetic_images", "image_classification"]


class ImageData(NamedTuple):
    """A train/test split of flattened images, standardised with the training set's statistics.

    Attributes:
      x_train: ``(N_train, d)`` float32.
      y_train: ``(N_train,)`` int32 labels in [0, n_classes).
      x_test: ``(N_test, d)``.
      y_test: ``(N_test,)``.
      n_classes: number of classes.
      name: "digits" (scikit-learn's bundled UCI digits) or "synthetic_digits".
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    name: str


def _split(x, y, n_classes, name, test_fraction, seed):
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    n_test = int(round(test_fraction * len(x)))
    test, train = order[:n_test], order[n_test:]
    mean, std = x[train].mean(0), x[train].std(0)
    std = np.where(std > 0, std, 1.0)  # constant border pixels of the digits
    x = ((x - mean) / std).astype(np.float32)
    y = y.astype(np.int32)
    return ImageData(x[train], y[train], x[test], y[test], n_classes, name)


def digits(*, test_fraction: float = 0.2, seed: int = 0) -> ImageData:
    """scikit-learn's 8×8 handwritten digits (1797 images, 10 classes), bundled with the package.

    Raises:
      ImportError: if scikit-learn is not installed (``pip install gradflow[data]``).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError(
            "tasks.digits needs scikit-learn (pip install 'gradflow[data]'); "
            "tasks.synthetic_images is the dependency-free alternative"
        ) from exc
    d = load_digits()
    return _split(
        np.asarray(d.data, np.float64), np.asarray(d.target), 10, "digits", test_fraction, seed
    )


def synthetic_images(
    *, n: int = 1800, n_classes: int = 10, side: int = 8, test_fraction: float = 0.2, seed: int = 0
) -> ImageData:
    """A generated digit-like task with the shapes of :func:`digits` (no dependencies).

    Each class has a prototype: a random stroke of 3 segments on a ``side × side`` grid. A sample
    is its class's prototype shifted by up to one pixel in each direction, with stroke intensity
    jitter and Gaussian pixel noise (σ = 0.3 of the stroke value), quantised to 0…16 like the
    digits. A linear classifier reaches well below 100 %, so depth matters.

    Returns:
      :class:`ImageData` named "synthetic_digits".
    """
    _checks.positive_int("n", n, 2)
    _checks.positive_int("n_classes", n_classes, 2)
    _checks.positive_int("side", side, 4)
    rng = np.random.default_rng(seed)
    protos = np.zeros((n_classes, side + 2, side + 2))
    for c in range(n_classes):
        pts = rng.uniform(1, side, size=(4, 2))
        for a, b in zip(pts[:-1], pts[1:]):
            for s in np.linspace(0, 1, 4 * side):
                i, j = np.round(a + s * (b - a)).astype(int)
                protos[c, i, j] = 1.0
    y = rng.integers(0, n_classes, size=n)
    shifts = rng.integers(0, 3, size=(n, 2))
    x = np.stack([protos[c, si : si + side, sj : sj + side] for c, (si, sj) in zip(y, shifts)])
    x = x * rng.uniform(0.6, 1.0, size=(n, 1, 1)) + 0.3 * rng.normal(size=x.shape)
    x = np.clip(np.round(16 * x), 0, 16).reshape(n, side * side)
    return _split(x.astype(np.float64), y, n_classes, "synthetic_digits", test_fraction, seed)


def image_classification(*, prefer: str = "digits", test_fraction: float = 0.2, seed: int = 0):
    """The digits when scikit-learn is installed, else :func:`synthetic_images`; see ``.name``."""
    if prefer not in ("digits", "synthetic_digits"):
        raise ValueError(f"prefer must be 'digits' or 'synthetic_digits', got {prefer!r}")
    if prefer == "digits":
        try:
            return digits(test_fraction=test_fraction, seed=seed)
        except ImportError:
            pass
    return synthetic_images(test_fraction=test_fraction, seed=seed)
