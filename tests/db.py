"""One storage (one engine) per database URL for a test, closed when the test ends.

Tests poll studies every 0.2 s while drivers run. ``optuna.load_study(storage=URL)`` builds a
new engine per call whose pooled connection stays open until Python's cycle collector runs,
which ran a PostgreSQL server out of connections; so tests read and write through these.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial

from search.store import close_readonly_storages, close_storage, open_storage

_storages: dict[str, optuna.storages.RDBStorage] = {}


def storage(url: str) -> optuna.storages.RDBStorage:
    """The test's writable storage for ``url`` (opened on first use)."""
    if url not in _storages:
        _storages[url] = open_storage(url)
    return _storages[url]


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage(url))


def trials(url: str, name: str) -> list[FrozenTrial]:
    """The study's trials straight from the database (no cache, no deep copy); [] if the
    study does not exist yet."""
    backend = storage(url)
    try:
        study_id = backend.get_study_id_from_name(name)
    except KeyError:
        return []
    return backend.get_all_trials(study_id, deepcopy=False)


def study_names(url: str) -> list[str]:
    return [s.study_name for s in storage(url).get_all_studies()]


def delete_study(url: str, name: str) -> None:
    optuna.delete_study(study_name=name, storage=storage(url))


def close_all() -> None:
    """Close every storage the test opened, and the product's cached readers."""
    while _storages:
        close_storage(_storages.popitem()[1])
    close_readonly_storages()
