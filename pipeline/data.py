"""Datasets, their identity, the validation split and the labeled subset.

MNIST-like sets are read from `<name>.npz` in Keras' layout, from `$SGAN_DATA_DIR` or else this project's
cache (`$XDG_CACHE_HOME/sgan-bench/datasets`, by default `~/.cache/sgan-bench/datasets`); when absent there they
are downloaded with Keras' own loader (which keeps its own files in its own cache) and saved in this project's
cache, never over a file of Keras' (unless `SGAN_OFFLINE=1`: then a missing file is an error). `digits` is
scikit-learn's bundled 8x8 set brought to 28x28, so a real dataset is always available offline.

Data is identified by its content, never by the file's bytes: a hash of the arrays written as IDX
files (the format MNIST is published in), so a re-saved or re-downloaded file keeps its identity, and
MNIST is checked against the published checksums of its original files.
"""

from __future__ import annotations

import hashlib
import struct
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import NUM_CLASSES, ConfigError, validate_labels
from pipeline.environment import DATA_DIR, OFFLINE, value

ARRAYS = ("x_train", "y_train", "x_test", "y_test")
IMAGE_SHAPE = (28, 28, 1)
VALIDATION_SIZE = 5000  # at most; a tenth of smaller training splits
VALIDATION_SEED = 20160610  # fixed: one validation split per dataset, whatever the run's seed

# MD5 of the original MNIST files (train-images-idx3-ubyte, ...), as published with the data set.
PUBLISHED_MD5 = {
    "mnist": {
        "x_train": "6bbc9ace898e44ae57da46a324031adb",
        "y_train": "a25bea736e30d166cdddb491f175f624",
        "x_test": "2646ac647ad5339dbf082846283269ea",
        "y_test": "27ae3e4e09519cfbb04c329615203637",
    }
}


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
    checksum: str  # sha256 of the content (the arrays as IDX files), however the file was saved
    source: str
    validation: np.ndarray  # indices into the training split, never labeled, never in the unlabeled pool
    verified: str = "unverified"  # "published": matches the published checksums; "MISMATCH": does not
    num_classes: int = NUM_CLASSES

    @property
    def pool(self) -> np.ndarray:
        """Training indices open to training: every one but the validation split's."""
        return np.setdiff1d(np.arange(len(self.y_train)), self.validation)


def scale_pixels(images: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1], channels last: the generator's tanh range."""
    x = images.astype(np.float32) / 127.5 - 1.0
    return x.reshape((-1, *IMAGE_SHAPE))


def unscale_pixels(images: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> uint8 [0, 255], for viewing."""
    return np.clip(np.rint((np.asarray(images) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def data_dir() -> Path:
    """`$SGAN_DATA_DIR`, else this project's own cache folder."""
    if value(DATA_DIR):
        return Path(value(DATA_DIR))
    return Path(value("XDG_CACHE_HOME") or Path.home() / ".cache") / "sgan-bench" / "datasets"


def load_dataset(name: str) -> Dataset:
    if name == "digits":
        return _load_digits()
    path = data_dir() / f"{name}.npz"
    if not path.exists():
        _download(name, path)
    arrays = _read_npz(path)
    validate_arrays(arrays, str(path))
    return _dataset(name, arrays, str(path))


def _dataset(name: str, arrays: dict[str, np.ndarray], source: str) -> Dataset:
    checksum, md5 = content_identity(arrays)
    verified = "unverified"
    if name in PUBLISHED_MD5:
        verified = "published" if md5 == PUBLISHED_MD5[name] else "MISMATCH"
        if verified == "MISMATCH":
            print(
                f"warning: {source} is not the published {name}: its arrays, written as IDX files, do not give "
                f"the published checksums of the original files. Results on it are not {name} results.",
                file=sys.stderr,
            )
    y_train = arrays["y_train"].astype(np.int64)
    return Dataset(
        name=name,
        x_train=scale_pixels(arrays["x_train"]),
        y_train=y_train,
        x_test=scale_pixels(arrays["x_test"]),
        y_test=arrays["y_test"].astype(np.int64),
        checksum=checksum,
        source=source,
        validation=validation_split(y_train),
        verified=verified,
    )


def idx_bytes(array: np.ndarray) -> bytes:
    """The array as an IDX file of unsigned bytes: magic (0, 0, 8, ndim), big-endian sizes, data."""
    if array.ndim == 4:  # (N, 28, 28, 1) is stored as (N, 28, 28)
        array = array[..., 0]
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def content_identity(arrays: dict[str, np.ndarray]) -> tuple[str, dict[str, str]]:
    """(sha256 of the four arrays as IDX files, in order; each array's IDX MD5)."""
    digest, md5 = hashlib.sha256(), {}
    for key in ARRAYS:
        data = idx_bytes(arrays[key])
        digest.update(data)
        md5[key] = hashlib.md5(data).hexdigest()
    return digest.hexdigest(), md5


def _download(name: str, path: Path) -> None:
    if value(OFFLINE) not in ("", "0"):
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
    return _dataset("digits", arrays, "sklearn.datasets.load_digits")


def validation_split(y: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """A fixed, class-stratified set of training indices (sorted) for choosing hyper-parameters and
    epochs: the same for every method and seed, never labeled, never in the unlabeled pool.
    VALIDATION_SIZE images, or a tenth of a smaller training split; classes in proportion."""
    size = min(VALIDATION_SIZE, len(y) // 10)
    rng = np.random.default_rng(VALIDATION_SEED)
    counts = np.bincount(y, minlength=num_classes)
    share = counts * size / len(y)
    per_class = np.floor(share).astype(int)
    per_class[np.argsort(per_class - share)[: size - per_class.sum()]] += 1  # largest remainders
    chosen = [rng.choice(np.flatnonzero(y == cls), per_class[cls], replace=False) for cls in range(num_classes)]
    return np.sort(np.concatenate(chosen))


def labeled_subset(
    y: np.ndarray,
    labels: int,
    seed: int,
    num_classes: int = NUM_CLASSES,
    excluded: np.ndarray | None = None,
    rule: str = "balanced",
) -> np.ndarray:
    """Indices into the training split of the labeled images, from outside `excluded` (the validation
    split).

    `balanced` (the default): class-balanced, drawn without replacement; depends only on (labels of the
    dataset, excluded, labels, seed), so every method run with the same seed sees the same labeled
    images. When `labels` does not divide by the number of classes, the remainder goes to classes chosen
    by the seed. `first`: the first `labels` images in file order, whatever their classes and the seed
    (the GANs in Action notebook's rule, for replicating it; here the validation split's images are
    skipped, so it is the notebook's set only where none of them falls among its first images).
    """
    validate_labels(labels, num_classes)
    open_to_labels = np.ones(len(y), bool)
    if excluded is not None:
        open_to_labels[excluded] = False
    if rule == "first":
        return np.flatnonzero(open_to_labels)[:labels]
    rng = np.random.default_rng([seed, labels])
    per_class = np.full(num_classes, labels // num_classes)
    per_class[rng.choice(num_classes, labels % num_classes, replace=False)] += 1
    chosen = []
    for cls in range(num_classes):
        pool = np.flatnonzero((y == cls) & open_to_labels)
        if per_class[cls] > len(pool):
            raise ConfigError(
                f"labels={labels} needs {per_class[cls]} examples of class {cls}, "
                f"but the training split has only {len(pool)}"
            )
        chosen.append(rng.choice(pool, per_class[cls], replace=False))
    return np.sort(np.concatenate(chosen))


def class_counts(y: np.ndarray, num_classes: int = NUM_CLASSES) -> list[int]:
    return np.bincount(y, minlength=num_classes).tolist()
