from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from torchvision.datasets import CIFAR10

from model import DataError, load_cifar10, load_dataset, load_digits
from model import data as data_module
from tests.cifar_files import CLASSES, write_cifar10


def test_digits_split_is_fixed_by_its_seed() -> None:
    first = load_digits(split_seed=0)
    again = load_digits(split_seed=0)
    other = load_digits(split_seed=1)
    assert first.sizes() == {"train": 1149, "val": 288, "test": 360}
    assert first.train_images.shape[1:] == (3, 16, 16)
    assert first.train_images.dtype == torch.uint8
    assert torch.equal(first.val_labels, again.val_labels)
    assert torch.equal(first.val_images, again.val_images)
    assert not torch.equal(first.val_images, other.val_images)
    # The test split never depends on the validation seed.
    assert torch.equal(first.test_images, other.test_images)
    # Stratified: every class is in the validation split.
    assert set(first.val_labels.tolist()) == set(range(10))


def test_cifar10_reader_on_files_in_the_standard_format(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path, per_batch=40, test_size=30)
    # Files of our own in the standard format: not the published ones, so verify=False.
    splits = load_cifar10(tmp_path, val_fraction=0.1, download=False, verify=False)
    assert splits.sizes() == {"train": 180, "val": 20, "test": 30}
    assert splits.classes == tuple(CLASSES)
    assert splits.train_images.shape[1:] == (3, 32, 32)
    # The reader keeps the CHW byte layout of the pickles: image 0 of the test batch.
    import pickle

    with (folder / "test_batch").open("rb") as handle:
        raw = pickle.load(handle, encoding="latin1")
    assert torch.equal(splits.test_images[0], torch.from_numpy(raw["data"][0].reshape(3, 32, 32)))
    again = load_dataset("cifar10", data_dir=tmp_path, split_seed=0, download=False, verify=False)
    assert torch.equal(splits.val_labels, again.val_labels)


def test_cifar10_constants_match_torchvision() -> None:
    published = {name: md5 for name, md5 in [*CIFAR10.train_list, *CIFAR10.test_list]}
    published[CIFAR10.meta["filename"]] = CIFAR10.meta["md5"]
    assert published == data_module.CIFAR10_MD5
    assert CIFAR10.url == data_module.CIFAR10_URL
    assert CIFAR10.filename == data_module.CIFAR10_ARCHIVE
    assert CIFAR10.tgz_md5 == data_module.CIFAR10_ARCHIVE_MD5
    assert CIFAR10.base_folder == data_module.CIFAR10_FOLDER


def test_offline_and_missing_names_the_folder_and_the_archive(tmp_path: Path) -> None:
    # Port 9 (discard) refuses at once: the real download path, without the internet.
    with pytest.raises(DataError) as error:
        load_cifar10(tmp_path / "empty", url="http://127.0.0.1:9/cifar-10-python.tar.gz")
    message = str(error.value)
    assert str(tmp_path / "empty" / "cifar-10-batches-py") in message
    assert "cifar-10-python.tar.gz" in message and CIFAR10.url in message


def test_missing_without_download_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset.download"):
        load_cifar10(tmp_path, download=False)


def test_corrupt_batch_names_the_file(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path)
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_3"):
        load_cifar10(tmp_path, download=False, verify=False)


def test_unknown_dataset() -> None:
    with pytest.raises(DataError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")


def test_batches_that_are_not_the_published_files_are_refused(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    with pytest.raises(DataError, match="does not match the published MD5") as error:
        load_cifar10(tmp_path, download=False)
    assert "data_batch_1" in str(error.value) and "dataset.verify: false" in str(error.value)


class _RunsCode:
    def __reduce__(self) -> tuple:
        return (os.system, ("touch pwned",))


def test_a_batch_that_would_run_code_is_refused_even_unverified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_cifar10(tmp_path)
    with (folder / "data_batch_2").open("wb") as handle:
        pickle.dump({"data": _RunsCode(), "labels": [0]}, handle)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="asks to build posix.system"):
        load_cifar10(tmp_path, download=False, verify=False)
    assert not (tmp_path / "pwned").exists()


def test_trials_get_no_test_split() -> None:
    data = load_digits()
    searched = data.without_test()
    assert searched.sizes() == {**data.sizes(), "test": 0}
    assert torch.equal(searched.train_images, data.train_images)
    assert torch.equal(searched.val_labels, data.val_labels)
    # Not a view of the test storage: pickling it (Ray's object store) carries no test image.
    assert len(pickle.dumps(searched.test_images)) < 1000
