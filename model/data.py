"""Data sets behind one interface: uint8 image tensors with a fixed, seeded validation split.

Every loader returns :class:`DataSplits`: ``N x 3 x H x W`` uint8 images and int64 labels for train
/ validation / test. The validation split is carved from the training set with a seeded, stratified
split, so every trial of a study sees the same split (and the test split is never used to choose
anything). The test split is kept for final reporting only; nothing in the search reads it.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.error import URLError

import numpy as np
import torch
from torch import Tensor

from model.errors import DataError
from model.settings import DATASETS

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
CIFAR10_META_FILE = "batches.meta"
# The published MD5 of every file in the archive (the same list torchvision checks).
CIFAR10_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
# What a CIFAR pickle may build besides plain containers: numpy arrays and their dtypes.
# Anything else (a reduce to os.system, say) is refused before it runs.
_ARRAY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # protocol 5
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 carry bytes
}


@dataclass(frozen=True)
class DataSplits:
    """Images as uint8 ``N x 3 x H x W`` tensors on the CPU; labels as int64."""

    name: str
    classes: tuple[str, ...]
    train_images: Tensor
    train_labels: Tensor
    val_images: Tensor
    val_labels: Tensor
    test_images: Tensor
    test_labels: Tensor

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        return int(self.train_images.shape[-1])

    def channel_stats(self) -> tuple[Tensor, Tensor]:
        """Per-channel mean and std of the training split, in pixel units (0..255)."""
        pixels = self.train_images.float()
        return pixels.mean(dim=(0, 2, 3)), pixels.std(dim=(0, 2, 3))

    def without_test(self) -> DataSplits:
        """The same splits with an empty test split: what a search's trials get, so that no
        trial process holds the images that only final evaluation may read."""
        # clone: a view would carry (and pickle) the whole test storage along.
        return replace(
            self,
            test_images=self.test_images[:0].clone(),
            test_labels=self.test_labels[:0].clone(),
        )

    def refit_on_train_and_val(self) -> DataSplits:
        """Training on the training and validation splits together (a final refit once the
        settings are chosen): no validation split is left to report on."""
        return replace(
            self,
            train_images=torch.cat([self.train_images, self.val_images]),
            train_labels=torch.cat([self.train_labels, self.val_labels]),
            val_images=self.val_images[:0].clone(),
            val_labels=self.val_labels[:0].clone(),
        )

    def sizes(self) -> dict[str, int]:
        return {
            "train": len(self.train_labels),
            "val": len(self.val_labels),
            "test": len(self.test_labels),
        }


def _stratified_split(
    images: np.ndarray, labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    # Imported here: scikit-learn's import (~0.6 s) would otherwise be paid by every trial
    # process, which receives its data already split.
    from sklearn.model_selection import train_test_split

    return train_test_split(images, labels, test_size=fraction, random_state=seed, stratify=labels)


def _split(
    images: np.ndarray, labels: np.ndarray, val_fraction: float, split_seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"dataset.val_fraction must be in (0, 1), got {val_fraction}")
    return _stratified_split(images, labels, val_fraction, split_seed)


def _as_splits(
    name: str,
    classes: tuple[str, ...],
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    val_fraction: float,
    split_seed: int,
) -> DataSplits:
    train_x, val_x, train_y, val_y = _split(*train, val_fraction, split_seed)

    def images(array: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.uint8))

    def labels(array: np.ndarray) -> Tensor:
        return torch.from_numpy(np.asarray(array, dtype=np.int64))

    return DataSplits(
        name=name,
        classes=classes,
        train_images=images(train_x),
        train_labels=labels(train_y),
        val_images=images(val_x),
        val_labels=labels(val_y),
        test_images=images(test[0]),
        test_labels=labels(test[1]),
    )


def load_digits(
    *, image_size: int = 16, val_fraction: float = 0.2, split_seed: int = 0
) -> DataSplits:
    """scikit-learn's bundled 8x8 handwritten digits, upscaled to ``image_size``, 3 channels.

    It ships with scikit-learn, so it works offline. It has no official test split: a fixed
    20% (seed 0, stratified) is held out as test; ``val_fraction`` of the rest is validation.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    pixels = torch.from_numpy(bunch.images.astype(np.float32) * (255.0 / 16.0))
    resized = torch.nn.functional.interpolate(
        pixels[:, None], size=(image_size, image_size), mode="bilinear", align_corners=False
    )
    images = resized.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).numpy()
    labels = bunch.target.astype(np.int64)
    rest_x, test_x, rest_y, test_y = _stratified_split(images, labels, 0.2, seed=0)
    classes = tuple(str(c) for c in range(10))
    return _as_splits(
        "digits", classes, (rest_x, rest_y), (test_x, test_y), val_fraction, split_seed
    )


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles containers, strings, numbers and numpy arrays, and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ARRAY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"the file asks to build {module}.{name}; a data batch holds only arrays, lists "
            "and strings, so it is not loaded"
        )


def _load_pickle(path: Path, verify: bool) -> Any:
    """A CIFAR pickle, checked against its published MD5 first (when ``verify``) and read
    with an unpickler that can only build arrays, whatever the file holds."""
    payload = path.read_bytes()
    expected = CIFAR10_MD5.get(path.name)
    if verify and expected and hashlib.md5(payload).hexdigest() != expected:
        raise DataError(
            f"{path} does not match the published MD5 of CIFAR-10's {path.name} "
            f"({expected}); it is not loaded. Delete {path.parent} and let resnet-hpo "
            f"download it again, or set dataset.verify: false for files of your own in the "
            "same format"
        )
    return _ArrayUnpickler(io.BytesIO(payload), encoding="latin1").load()


def _read_cifar_batch(path: Path, verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    try:
        entry = _load_pickle(path, verify)
        data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
    except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError) as error:
        if isinstance(error, DataError):
            raise
        raise DataError(
            f"{path} is not a readable CIFAR-10 batch ({error}). Delete the folder "
            f"{path.parent} and let resnet-hpo download it again, or re-extract "
            f"{CIFAR10_ARCHIVE} there."
        ) from error
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels")
    return data, labels


def _download_cifar10(data_dir: Path, url: str) -> None:
    from torchvision.datasets.utils import download_and_extract_archive

    folder = data_dir / CIFAR10_FOLDER
    try:
        # md5-checked; torchvision's utility resumes nothing, so a broken archive is removed.
        download_and_extract_archive(
            url, download_root=str(data_dir), filename=CIFAR10_ARCHIVE, md5=CIFAR10_ARCHIVE_MD5
        )
    except (URLError, OSError, RuntimeError) as error:
        raise DataError(
            f"CIFAR-10 is not in {folder} and downloading {url} failed ({error}). "
            f"On a machine with internet access download {CIFAR10_ARCHIVE} from {CIFAR10_URL}, "
            f"extract it into {data_dir} (it creates {CIFAR10_FOLDER}/), or point "
            f"dataset.data_dir at a folder that holds {CIFAR10_FOLDER}/."
        ) from error


def load_cifar10(
    data_dir: str | Path,
    *,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    download: bool = True,
    url: str = CIFAR10_URL,
    verify: bool = True,
) -> DataSplits:
    """CIFAR-10 from the standard ``cifar-10-batches-py`` files under ``data_dir``.

    45k train / 5k validation (``val_fraction=0.1``) / 10k test. Missing files are downloaded
    when ``download`` is true; otherwise, or offline, a :class:`DataError` says what to do.
    Each file is checked against its published MD5 before it is read (``verify``; turn it
    off for files of your own in the same format) and read with an unpickler that builds
    nothing but arrays and containers.
    """
    data_dir = Path(data_dir).expanduser()
    folder = data_dir / CIFAR10_FOLDER
    wanted = [*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE]
    missing = [name for name in wanted if not (folder / name).is_file()]
    if missing and download:
        _download_cifar10(data_dir, url)
        missing = [name for name in wanted if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"CIFAR-10 files {missing} are missing from {folder}. Download {CIFAR10_ARCHIVE} "
            f"from {CIFAR10_URL} and extract it into {data_dir}, or set dataset.download: true."
        )
    batches = [_read_cifar_batch(folder / name, verify) for name in CIFAR10_TRAIN_FILES]
    train = (np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]))
    test = _read_cifar_batch(folder / CIFAR10_TEST_FILE, verify)
    classes = _cifar_classes(folder, verify)
    return _as_splits("cifar10", classes, train, test, val_fraction, split_seed)


def _cifar_classes(folder: Path, verify: bool = True) -> tuple[str, ...]:
    meta = folder / CIFAR10_META_FILE
    if not meta.is_file():
        return tuple(str(c) for c in range(10))
    try:
        return tuple(_load_pickle(meta, verify)["label_names"])
    except (OSError, pickle.UnpicklingError, KeyError, TypeError, EOFError) as error:
        raise DataError(f"{meta} is not readable CIFAR-10 metadata ({error})") from error


def load_dataset(
    name: str,
    *,
    data_dir: str | Path = "data",
    val_fraction: float | None = None,
    split_seed: int = 0,
    download: bool = True,
    image_size: int | None = None,
    verify: bool = True,
) -> DataSplits:
    """Load a data set by name (``digits`` or ``cifar10``) with its default split sizes."""
    if name == "digits":
        return load_digits(
            image_size=image_size or 16,
            val_fraction=0.2 if val_fraction is None else val_fraction,
            split_seed=split_seed,
        )
    if name == "cifar10":
        return load_cifar10(
            data_dir,
            val_fraction=0.1 if val_fraction is None else val_fraction,
            split_seed=split_seed,
            download=download,
            verify=verify,
        )
    raise DataError(f"unknown dataset {name!r}; known data sets: {list(DATASETS)}")
