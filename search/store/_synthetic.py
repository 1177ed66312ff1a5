"""A synthetic ASHA study of any size, written fast: for benchmarks of the read layer.

Optuna's ``add_trials`` writes one trial per transaction (about 9 ms a trial on SQLite on a
2-core machine: 90 s for 10,000 trials). Here the study is created through Optuna (tables,
study, direction), then its trials, values, parameters, curves and attributes go in with one
multi-row insert per table, into Optuna's RDB schema (``v3.2.0.a``, as in ``_columns``). The
result is a standard study: ``optuna.load_study`` reads it (the benchmark's baseline does).
"""

from __future__ import annotations

import json
import math
import random
from datetime import datetime, timedelta

import optuna
import sqlalchemy as sa
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    distribution_to_json,
)

MAX_EPOCHS = 8
REDUCTION_FACTOR = 2
PARAMS = {
    "lr": FloatDistribution(1e-4, 1.0, log=True),
    "weight_decay": FloatDistribution(1e-6, 1e-2, log=True),
    "optimizer": CategoricalDistribution(["sgd", "nesterov", "adam", "adamw"]),
    "depth": CategoricalDistribution([20, 32, 44, 56]),
}


# Where the synthetic trials' checkpoint attributes point (no file is written there).
CHECKPOINT_ROOT = "runs/checkpoints/bench-report-0123abcd"


def write_synthetic_study(
    storage: optuna.storages.RDBStorage,
    name: str,
    trials: int,
    seed: int = 0,
    checkpoint_root: str = CHECKPOINT_ROOT,
) -> None:
    """``trials`` finished trials of an ASHA run (grace 1, reduction factor 2, 8 epochs):
    half stop at each rung (epochs 1, 2, 4) as PRUNED, the rest run 8 epochs as COMPLETE.
    Each trial's ``checkpoint`` attribute names ``checkpoint_root/trial_NNNNN``."""
    optuna.create_study(study_name=name, storage=storage, direction="maximize")
    rng = random.Random(seed)
    engine = storage.engine
    tables = sa.MetaData()
    tables.reflect(engine, only=["studies", "trials", "trial_params", "trial_values",
                                 "trial_intermediate_values", "trial_user_attributes"])  # fmt: skip
    start = datetime(2026, 1, 1)
    with engine.begin() as connection:
        study_id = connection.execute(
            sa.select(tables.tables["studies"].c.study_id).where(
                tables.tables["studies"].c.study_name == name
            )
        ).scalar_one()
        plans = [_plan(rng) for _ in range(trials)]
        connection.execute(
            tables.tables["trials"].insert(),
            [
                {"number": number, "study_id": study_id, "state": plan["state"],
                 "datetime_start": start + timedelta(seconds=10 * number),
                 "datetime_complete": start + timedelta(seconds=10 * number + plan["epochs"])}
                for number, plan in enumerate(plans)
            ],
        )  # fmt: skip
        trials_table = tables.tables["trials"]
        ids = dict(
            connection.execute(
                sa.select(trials_table.c.number, trials_table.c.trial_id).where(
                    trials_table.c.study_id == study_id
                )
            ).all()
        )
        _insert_rows(connection, tables, plans, ids, checkpoint_root)


def _plan(rng: random.Random) -> dict:
    # Half the trials stop at each rung: 1/2 at epoch 1, 1/4 at 2, 1/8 at 4, 1/8 run all 8.
    draw = rng.random()
    epochs = 1 if draw < 0.5 else 2 if draw < 0.75 else 4 if draw < 0.875 else MAX_EPOCHS
    params = {name: _sample(rng, distribution) for name, distribution in PARAMS.items()}
    speed = 3 * params["lr"] ** 0.3
    curve = {
        epoch: min(1.0, 1 - math.exp(-epoch * speed) + rng.gauss(0, 0.01))
        for epoch in range(1, epochs + 1)
    }
    return {
        "state": "COMPLETE" if epochs == MAX_EPOCHS else "PRUNED",
        "epochs": epochs,
        "params": params,
        "curve": curve,
    }


def _sample(rng: random.Random, distribution: optuna.distributions.BaseDistribution) -> object:
    if isinstance(distribution, CategoricalDistribution):
        return rng.choice(distribution.choices)
    assert isinstance(distribution, FloatDistribution)
    low, high = math.log(distribution.low), math.log(distribution.high)
    return math.exp(rng.uniform(low, high))


def _attributes(number: int, plan: dict, checkpoint_root: str) -> dict[str, object]:
    """The user attributes a real trial of this project carries (about 1 KB of JSON)."""
    epochs = plan["epochs"]
    return {
        "ray_trial_id": f"{number:08x}_{number:05d}",
        "driver": "bench-host:4242",
        "checkpoint": f"{checkpoint_root}/trial_{number:05d}",
        "config": {
            **plan["params"],
            "stem": "cifar",
            "width": 1.0,
            "momentum": 0.9,
            "batch_size": 512,
            "schedule": "cosine",
            "warmup_epochs": 1.0,
            "label_smoothing": 0.0,
            "epochs": MAX_EPOCHS,
            "augmentation": "crop_flip",
            "seed": number,
            "device": "cuda",
            "eval_batch_size": 1024,
            "pretrained": None,
            "freeze_depth": 0,
            "resolution": None,
            "compile": False,
        },  # fmt: skip
        "epochs_done": epochs,
        "stop_reason": "completed" if plan["state"] == "COMPLETE" else "asha",
        "wall_seconds": 14.0 * epochs + 3.0,
        "train_seconds": 12.5 * epochs,
        "device": "cuda:0",
    }


def _insert_rows(
    connection: sa.Connection,
    tables: sa.MetaData,
    plans: list[dict],
    ids: dict[int, int],
    checkpoint_root: str,
) -> None:
    encoded = {name: distribution_to_json(d) for name, d in PARAMS.items()}
    params, values, curves, attrs = [], [], [], []
    for number, plan in enumerate(plans):
        trial_id = ids[number]
        for name, value in plan["params"].items():
            distribution = PARAMS[name]
            params.append({"trial_id": trial_id, "param_name": name,
                           "param_value": distribution.to_internal_repr(value),
                           "distribution_json": encoded[name]})  # fmt: skip
        for epoch, value in plan["curve"].items():
            curves.append({"trial_id": trial_id, "step": epoch, "intermediate_value": value,
                           "intermediate_value_type": "FINITE"})  # fmt: skip
        # A PRUNED trial's value is its last epoch's, as Optuna's tell stores it.
        values.append({"trial_id": trial_id, "objective": 0,
                       "value": plan["curve"][plan["epochs"]], "value_type": "FINITE"})  # fmt: skip
        for key, value in _attributes(number, plan, checkpoint_root).items():
            attrs.append({"trial_id": trial_id, "key": key, "value_json": json.dumps(value)})
    for table, rows in (("trial_params", params), ("trial_values", values),
                        ("trial_intermediate_values", curves),
                        ("trial_user_attributes", attrs)):  # fmt: skip
        if rows:
            connection.execute(tables.tables[table].insert(), rows)
