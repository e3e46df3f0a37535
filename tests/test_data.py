import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import ConfigError
from pipeline.data import DataError, class_counts, labeled_subset, load_dataset

from .conftest import SHARED_DATA

# The content identity of MNIST: sha256 of its four arrays written as IDX files (not of the .npz's bytes)
MNIST_CONTENT_SHA256 = "b2d8f5bf39174ee5ffeefa97e42d673c35432b411bb5d1f74fbbeddae7f1690a"


def test_digits_is_28x28_scaled_and_split_the_same_way_every_time():
    first, second = load_dataset("digits"), load_dataset("digits")
    assert first.x_train.shape[1:] == (28, 28, 1) and first.x_test.shape[1:] == (28, 28, 1)
    assert first.x_train.dtype == np.float32
    assert first.x_train.min() == -1.0 and first.x_train.max() == 1.0
    assert len(first.x_train) + len(first.x_test) == 1797
    assert set(np.unique(first.y_test)) == set(range(10))
    assert first.checksum == second.checksum
    np.testing.assert_array_equal(first.y_test, second.y_test)


def test_mnist_loads_from_the_data_dir_with_its_checksum():
    mnist = load_dataset("mnist")
    assert mnist.x_train.shape == (60000, 28, 28, 1) and mnist.x_test.shape == (10000, 28, 28, 1)
    assert mnist.checksum == MNIST_CONTENT_SHA256 and mnist.verified == "published"
    assert mnist.source == str(SHARED_DATA / "mnist.npz")
    assert class_counts(mnist.y_test) == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert -1.0 <= mnist.x_train.min() < mnist.x_train.max() <= 1.0


@pytest.mark.parametrize("labels", [10, 25, 50, 100, 1000])
def test_labeled_subset_is_balanced_unique_and_from_the_training_split(labels):
    y = load_dataset("digits").y_train
    idx = labeled_subset(y, labels, seed=3)
    assert len(idx) == labels == len(np.unique(idx))
    counts = np.array(class_counts(y[idx]))
    assert counts.max() - counts.min() <= 1
    assert counts.sum() == labels


def test_labeled_subset_depends_only_on_labels_and_seed():
    y = load_dataset("digits").y_train
    np.testing.assert_array_equal(labeled_subset(y, 25, 1), labeled_subset(y.copy(), 25, 1))
    assert not np.array_equal(labeled_subset(y, 25, 1), labeled_subset(y, 25, 2))
    # the remainder of 25 over 10 classes goes to classes picked by the seed
    extra = {tuple(np.flatnonzero(np.array(class_counts(y[labeled_subset(y, 25, s)])) == 3)) for s in range(5)}
    assert len(extra) > 1


def test_labeled_subset_rejects_impossible_counts():
    data = load_dataset("digits")
    with pytest.raises(ConfigError, match="labels=5 is below the number of classes"):
        labeled_subset(data.y_train, 5, 0)
    with pytest.raises(ConfigError, match="training split has only"):
        labeled_subset(data.y_train, 1340, 0)
    labeled_subset(data.y_train, 1200, 0)  # possible from the whole split, not once validation is held out
    with pytest.raises(ConfigError, match="training split has only"):
        labeled_subset(data.y_train, 1200, 0, excluded=data.validation)


@pytest.mark.parametrize("name", ["digits", "mnist"])
def test_validation_split_is_fixed_stratified_and_apart_from_labels_and_pool(name):
    data, again = load_dataset(name), load_dataset(name)
    np.testing.assert_array_equal(data.validation, again.validation)
    assert len(data.validation) == min(5000, len(data.y_train) // 10) == len(np.unique(data.validation))
    share = np.bincount(data.y_train[data.validation], minlength=10) / len(data.validation)
    np.testing.assert_allclose(share, np.bincount(data.y_train, minlength=10) / len(data.y_train), atol=0.01)
    assert len(data.pool) + len(data.validation) == len(data.y_train)
    assert not set(data.pool) & set(data.validation)
    for labels in (10, 25, 100):
        for seed in range(3):
            idx = labeled_subset(data.y_train, labels, seed, excluded=data.validation)
            assert not set(idx) & set(data.validation) and set(idx) <= set(data.pool)


def _write(folder: Path, **arrays) -> Path:
    path = folder / "mnist.npz"
    np.savez(path, **arrays)
    return path


def _good_arrays():
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "y_train": np.arange(20) % 10,
        "x_test": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
        "y_test": np.arange(10),
    }


def test_a_missing_file_is_not_downloaded_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("SGAN_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match=f"{tmp_path / 'fashion_mnist.npz'}: file not found"):
        load_dataset("fashion_mnist")


def test_truncated_file_names_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("SGAN_DATA_DIR", str(tmp_path))
    (tmp_path / "mnist.npz").write_bytes((SHARED_DATA / "mnist.npz").read_bytes()[:100_000])
    with pytest.raises(DataError, match=rf"{tmp_path / 'mnist.npz'}: cannot read the file"):
        load_dataset("mnist")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.pop("y_test"), "missing y_test"),
        (lambda a: a.update(x_train=a["x_train"].astype(np.float32)), "x_train must be uint8 images of 28x28"),
        (lambda a: a.update(x_test=a["x_test"][:, :20]), "x_test must be uint8 images of 28x28"),
        (lambda a: a.update(y_train=a["y_train"] + 5), r"y_train labels must lie in \[0, 10\)"),
        (lambda a: a.update(y_test=a["y_test"][:5]), "x_test has 10 images but y_test has 5 labels"),
    ],
)
def test_wrong_file_contents_are_rejected_with_the_path(tmp_path, monkeypatch, change, message):
    arrays = _good_arrays()
    change(arrays)
    path = _write(tmp_path, **arrays)
    monkeypatch.setenv("SGAN_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match=message) as err:
        load_dataset("mnist")
    assert str(path) in str(err.value)


def test_a_valid_small_file_loads_and_is_identified_by_content_not_as_mnist(tmp_path, monkeypatch, capfd):
    arrays = _good_arrays()
    _write(tmp_path, **arrays)
    monkeypatch.setenv("SGAN_DATA_DIR", str(tmp_path))
    data = load_dataset("mnist")
    idx = b"".join(
        bytes([0, 0, 8, a.ndim]) + b"".join(n.to_bytes(4, "big") for n in a.shape) + a.astype(np.uint8).tobytes()
        for a in (arrays[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    )
    assert data.checksum == hashlib.sha256(idx).hexdigest()
    assert data.x_train.shape == (20, 28, 28, 1)
    assert data.verified == "MISMATCH"
    assert f"warning: {tmp_path / 'mnist.npz'} is not the published mnist" in capfd.readouterr().err


def test_the_same_data_saved_differently_keeps_its_identity(tmp_path, monkeypatch):
    """What a download re-saved with another time stamp, compression, dtype or shape gives."""
    with np.load(SHARED_DATA / "mnist.npz") as full:
        arrays = {key: full[key] for key in full.files}
    np.savez(tmp_path / "mnist.npz", **{**arrays, "y_train": arrays["y_train"].astype(np.int64)})
    resaved_folder = tmp_path / "other"
    resaved_folder.mkdir()
    np.savez_compressed(resaved_folder / "mnist.npz", **{**arrays, "x_test": arrays["x_test"][..., None]})
    assert (tmp_path / "mnist.npz").read_bytes() != (resaved_folder / "mnist.npz").read_bytes()
    identities = set()
    for folder in (tmp_path, resaved_folder, SHARED_DATA):
        monkeypatch.setenv("SGAN_DATA_DIR", str(folder))
        data = load_dataset("mnist")
        identities.add((data.checksum, data.verified))
    assert identities == {(MNIST_CONTENT_SHA256, "published")}


def test_without_a_data_dir_data_lives_in_this_projects_cache_never_in_keras_own(tmp_path, monkeypatch):
    monkeypatch.delenv("SGAN_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("SGAN_OFFLINE", "1")
    ours = tmp_path / "cache" / "sgan-bench" / "datasets" / "mnist.npz"
    with pytest.raises(DataError, match=f"{ours}: file not found, and SGAN_OFFLINE is set"):
        load_dataset("mnist")
    ours.parent.mkdir(parents=True)
    shutil.copyfile(SHARED_DATA / "mnist.npz", ours)  # as a download leaves it
    assert load_dataset("mnist").source == str(ours)
    assert not (tmp_path / "keras").exists()  # Keras' folder untouched
