"""Small study definitions for tests: tiny ResNets on digits, a few epochs."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def tiny_study(name: str, storage: str, output_dir: Path, **overrides: Any) -> dict[str, Any]:
    study: dict[str, Any] = {
        "name": name,
        "dataset": {"name": "digits"},
        "space": {
            "depth": {"type": "categorical", "choices": [8]},
            "lr": {"type": "float", "low": 0.01, "high": 0.1, "log": True},
            "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
            "momentum": {"type": "float", "low": 0.8, "high": 0.95, "when": {"optimizer": "sgd"}},
        },
        "fixed": {"width": 0.25, "batch_size": 64, "device": "cpu", "augmentation": "none"},
        "sampler": {"name": "random", "seed": 0},
        "asha": {"max_epochs": 3, "grace_period": 1, "reduction_factor": 2},
        "n_trials": 4,
        "max_concurrent": 2,
        "storage": storage,
        "output_dir": str(output_dir),
    }
    study.update(overrides)
    return study


def slow_study(name: str, storage: str, output_dir: Path, **overrides: Any) -> dict[str, Any]:
    """One trial at a time, six epochs each and no pruning: long enough to interrupt a trial
    mid-run (a signal, a pause, a cut network) with an epoch already stored."""
    settings = {
        "n_trials": 3,
        "max_concurrent": 1,
        "asha": {"max_epochs": 6, "enabled": False},
        "fixed": {"width": 0.25, "batch_size": 16, "device": "cpu", "augmentation": "none"},
    }
    return tiny_study(name, storage, output_dir, **{**settings, **overrides})
