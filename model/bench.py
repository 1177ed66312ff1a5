"""``bench trainer``: training images/s of our trial loop next to the seeds' pipeline.

Both run on the same device with the same network. The seeds' pipeline is the tutorials'
one: a CIFAR10-style dataset that decodes each image to PIL, ``RandomCrop(32, 4)`` +
``RandomHorizontalFlip`` + ``ToTensor`` + ``Normalize`` per image, a ``DataLoader`` with batch
128 and two workers, Adam, fp32. Ours is :func:`model.train.fit` itself (device-resident
uint8 data, whole-batch augmentation, bf16 autocast and channels_last on CUDA). The data are
random CIFAR-shaped images: throughput does not depend on pixel values.

Runs without Ray or Optuna: ``python -m model.bench trainer --device cuda --json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import date
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from model.data import DataSplits
from model.resnet import build_resnet
from model.train import TrialConfig, fit, resolve_device

SEED_MEAN = (0.4914, 0.4822, 0.4465)
SEED_STD = (0.2470, 0.2435, 0.2616)


def random_cifar(n_train: int, n_val: int = 512, seed: int = 0) -> DataSplits:
    rng = np.random.default_rng(seed)

    def images(n: int) -> torch.Tensor:
        return torch.from_numpy(rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8))

    def labels(n: int) -> torch.Tensor:
        return torch.from_numpy(rng.integers(0, 10, n)).long()

    return DataSplits(
        name="random-cifar",
        classes=tuple(str(c) for c in range(10)),
        train_images=images(n_train),
        train_labels=labels(n_train),
        val_images=images(n_val),
        val_labels=labels(n_val),
        test_images=images(1),
        test_labels=labels(1),
    )


def ours_images_per_s(
    depth: int, stem: str, batch_size: int, device: str, n_train: int, epochs: int = 3
) -> float:
    """Images/s of the last training epoch of ``fit`` (earlier epochs warm up cudnn)."""
    config = TrialConfig(
        depth=depth,
        stem=stem,
        batch_size=batch_size,
        epochs=epochs,
        optimizer="sgd",
        lr=0.01,
        schedule="constant",
        augmentation="crop_flip",
        device=device,
    )
    reports: list[dict[str, Any]] = []
    fit(config, random_cifar(n_train), reports.append)
    return float(reports[-1]["images_per_s"])


class SeedStyleCIFAR(Dataset):
    """What ``torchvision.datasets.CIFAR10.__getitem__`` does: HWC uint8 -> PIL -> transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Any) -> None:
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = Image.fromarray(self.images[index])
        return self.transform(image), int(self.labels[index])


def seed_images_per_s(depth: int, stem: str, device: str, n_train: int, warmup: int = 5) -> float:
    """Images/s of the seeds' pipeline, measured after ``warmup`` batches."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n_train)
    transform = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(SEED_MEAN, SEED_STD),
        ]
    )
    loader = DataLoader(
        SeedStyleCIFAR(images, labels, transform), batch_size=128, shuffle=True, num_workers=2
    )
    target = resolve_device(device)
    model = build_resnet(depth, 10, stem=stem).to(target).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = torch.nn.CrossEntropyLoss()
    seen, started = 0, None
    for step, (x, y) in enumerate(loader):
        if step == warmup:
            if target.type == "cuda":
                torch.cuda.synchronize()
            started, seen = time.perf_counter(), 0
        x, y = x.to(target), y.to(target)
        loss = criterion(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += len(y)
    if target.type == "cuda":
        torch.cuda.synchronize()
    if started is None:
        raise ValueError(f"n_train={n_train} is too small: need more than {warmup} batches")
    return seen / (time.perf_counter() - started)


def _packed_worker(args: tuple[Any, ...]) -> float:
    barrier, threads, kwargs = args
    torch.set_num_threads(threads)
    barrier.wait()  # start the packed trials together so that they really share the device
    return ours_images_per_s(**kwargs)


def packed_images_per_s(trials: int, **kwargs: Any) -> float:
    """Summed images/s of ``trials`` trial processes sharing one device (like gpu: 1/N)."""
    if trials == 1:
        return ours_images_per_s(**kwargs)
    context = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // trials)
    with context.Manager() as manager:
        barrier = manager.Barrier(trials)
        with context.Pool(trials) as pool:
            rates = pool.map(_packed_worker, [(barrier, threads, kwargs)] * trials)
    return float(sum(rates))


def run_trainer_bench(
    depth: int = 18,
    stem: str = "cifar",
    batch_size: int = 512,
    device: str = "auto",
    trials_per_device: int = 1,
    n_train: int | None = None,
    repeats: int = 1,
    progress: Any = None,
) -> dict[str, Any]:
    """Median images/s of ``repeats`` alternating runs of each pipeline (alternating, so
    that a slow phase of a shared machine does not favour one side)."""
    target = resolve_device(device)
    n_train = n_train or (50_000 if target.type == "cuda" else 4_096)
    say = progress or (lambda message: None)
    ours_runs: list[float] = []
    seed_runs: list[float] = []
    for attempt in range(1, repeats + 1):
        say(
            f"[{attempt}/{repeats}] ours: {trials_per_device} trial(s) of ResNet-{depth} "
            f"({stem} stem) on {target} ..."
        )
        ours_runs.append(
            packed_images_per_s(
                trials_per_device,
                depth=depth,
                stem=stem,
                batch_size=batch_size,
                device=str(target),
                n_train=n_train,
            )
        )
        say(f"[{attempt}/{repeats}] seeds' pipeline (PIL, DataLoader with 2 workers, fp32) ...")
        seed_runs.append(seed_images_per_s(depth, stem, str(target), n_train))
    ours, seeds = statistics.median(ours_runs), statistics.median(seed_runs)
    name = torch.cuda.get_device_name(target) if target.type == "cuda" else platform.processor()
    return {
        "ours_images_per_s": round(ours, 1),
        "seed_images_per_s": round(seeds, 1),
        "ratio": round(ours / seeds, 2),
        "ours_runs": [round(r, 1) for r in ours_runs],
        "seed_runs": [round(r, 1) for r in seed_runs],
        "device": f"{target.type}: {name or platform.machine()}",
        "depth": depth,
        "stem": stem,
        "batch_size": batch_size,
        "trials_per_device": trials_per_device,
        "train_images": n_train,
        "torch": torch.__version__,
        "date": date.today().isoformat(),
    }


def build_parser(prog: str = "python -m model.bench") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="bench", required=True, metavar="BENCH")
    trainer = commands.add_parser("trainer", help="training images/s: ours vs the seeds'")
    trainer.add_argument("--depth", type=int, default=18)
    trainer.add_argument("--stem", choices=("cifar", "imagenet"), default="cifar")
    trainer.add_argument("--batch-size", type=int, default=512)
    trainer.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    trainer.add_argument("--trials-per-device", type=int, default=1)
    trainer.add_argument("--train-images", type=int, default=None, help="per epoch")
    trainer.add_argument(
        "--repeats", type=int, default=3, help="alternating runs of each; medians are reported"
    )
    trainer.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "python -m model.bench") -> int:
    args = build_parser(prog).parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"{prog}: error: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 2
    if args.trials_per_device < 1:
        print(f"{prog}: error: --trials-per-device must be >= 1", file=sys.stderr)
        return 2
    result = run_trainer_bench(
        depth=args.depth,
        stem=args.stem,
        batch_size=args.batch_size,
        device=args.device,
        trials_per_device=args.trials_per_device,
        n_train=args.train_images,
        repeats=max(1, args.repeats),
        progress=None if args.json else lambda message: print(message, flush=True),
    )
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"ours:  {result['ours_images_per_s']:>10,.0f} images/s "
            f"({args.trials_per_device} trial(s) on the device)\n"
            f"seeds: {result['seed_images_per_s']:>10,.0f} images/s\n"
            f"ratio: {result['ratio']:.2f}x  ({result['device']}, ResNet-{args.depth}, "
            f"{args.stem} stem, batch {args.batch_size})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
