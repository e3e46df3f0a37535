"""Datasets and the labeled subset.

MNIST-like sets are read from `<name>.npz` in Keras' layout, from `$SGAN_DATA_DIR` or else Keras'
cache, and downloaded with Keras' own loader when absent (unless `SGAN_OFFLINE=1`). `digits` is
scikit-learn's bundled 8x8 set brought to 28x28, so a real dataset is always available offline.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import NUM_CLASSES, ConfigError, validate_labels

ARRAYS = ("x_train", "y_train", "x_test", "y_test")
IMAGE_SHAPE = (28, 28, 1)


class DataError(RuntimeError):
    """A data file is missing, unreadable or not what it claims to be; the message names the path."""


@dataclass(frozen=True)
class Dataset:
    """Images scaled to [-1, 1] with shape (N, 28, 28, 1); integer labels in [0, num_classes)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    checksum: str  # sha256 of the source file (or of the arrays for `digits`)
    source: str
    num_classes: int = NUM_CLASSES


def scale_pixels(images: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1], channels last: the generator's tanh range."""
    x = images.astype(np.float32) / 127.5 - 1.0
    return x.reshape((-1, *IMAGE_SHAPE))


def unscale_pixels(images: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> uint8 [0, 255], for viewing."""
    return np.clip(np.rint((np.asarray(images) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def data_dir() -> Path:
    if os.environ.get("SGAN_DATA_DIR"):
        return Path(os.environ["SGAN_DATA_DIR"])
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"


def load_dataset(name: str) -> Dataset:
    if name == "digits":
        return _load_digits()
    path = data_dir() / f"{name}.npz"
    if not path.exists():
        _download(name, path)
    arrays = _read_npz(path)
    validate_arrays(arrays, str(path))
    return Dataset(
        name=name,
        x_train=scale_pixels(arrays["x_train"]),
        y_train=arrays["y_train"].astype(np.int64),
        x_test=scale_pixels(arrays["x_test"]),
        y_test=arrays["y_test"].astype(np.int64),
        checksum=_sha256(path),
        source=str(path),
    )


def _download(name: str, path: Path) -> None:
    if os.environ.get("SGAN_OFFLINE", "") not in ("", "0"):
        raise DataError(f"{path}: file not found, and SGAN_OFFLINE is set so it will not be downloaded")
    import keras  # imported here: only a download needs it

    try:
        (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, name).load_data()
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    except Exception as err:  # network, permissions, disk: all mean the same to the user
        raise DataError(f"{path}: file not found and downloading {name} failed: {err}") from err


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [key for key in ARRAYS if key not in npz.files]
            if missing:
                raise DataError(f"{path}: not a dataset file in Keras layout, missing {', '.join(missing)}")
            return {key: npz[key] for key in ARRAYS}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: cannot read the file (truncated or not an .npz?): {err}") from err


def validate_arrays(arrays: dict[str, np.ndarray], where: str) -> None:
    """Check shapes, dtypes and label ranges so that a wrong file fails here, not mid-training."""
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim not in (3, 4) or x.shape[1:3] != (28, 28):
            raise DataError(f"{where}: x_{split} must be uint8 images of 28x28, got {x.dtype} {x.shape}")
        if x.ndim == 4 and x.shape[3] != 1:
            raise DataError(f"{where}: x_{split} must have one channel, got shape {x.shape}")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{where}: y_{split} must be a 1-d integer array, got {y.dtype} {y.shape}")
        if len(x) != len(y) or len(x) == 0:
            raise DataError(f"{where}: x_{split} has {len(x)} images but y_{split} has {len(y)} labels")
        if y.min() < 0 or y.max() >= NUM_CLASSES:
            raise DataError(f"{where}: y_{split} labels must lie in [0, {NUM_CLASSES}), got [{y.min()}, {y.max()}]")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_digits() -> Dataset:
    """scikit-learn's 8x8 digits (values 0-16), upsampled 3x and padded to 28x28, fixed 75/25 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    pixels = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    pixels = np.pad(np.kron(pixels, np.ones((3, 3), np.uint8)), ((0, 0), (2, 2), (2, 2)))
    x_train, x_test, y_train, y_test = train_test_split(
        pixels, bunch.target, test_size=0.25, random_state=0, stratify=bunch.target
    )
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    validate_arrays(arrays, "sklearn digits")
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(arrays[k]).tobytes() for k in ARRAYS))
    return Dataset(
        name="digits",
        x_train=scale_pixels(x_train),
        y_train=y_train.astype(np.int64),
        x_test=scale_pixels(x_test),
        y_test=y_test.astype(np.int64),
        checksum=digest.hexdigest(),
        source="sklearn.datasets.load_digits",
    )


def labeled_subset(y: np.ndarray, labels: int, seed: int, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Class-balanced indices into the training split, drawn without replacement.

    Depends only on (labels of the dataset, labels, seed), so every method run with the same seed
    sees the same labeled images. When `labels` does not divide by the number of classes, the
    remainder goes to classes chosen by the seed.
    """
    validate_labels(labels, num_classes)
    rng = np.random.default_rng([seed, labels])
    per_class = np.full(num_classes, labels // num_classes)
    per_class[rng.choice(num_classes, labels % num_classes, replace=False)] += 1
    chosen = []
    for cls in range(num_classes):
        pool = np.flatnonzero(y == cls)
        if per_class[cls] > len(pool):
            raise ConfigError(
                f"labels={labels} needs {per_class[cls]} examples of class {cls}, "
                f"but the training split has only {len(pool)}"
            )
        chosen.append(rng.choice(pool, per_class[cls], replace=False))
    return np.sort(np.concatenate(chosen))


def class_counts(y: np.ndarray, num_classes: int = NUM_CLASSES) -> list[int]:
    return np.bincount(y, minlength=num_classes).tolist()
