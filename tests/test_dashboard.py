"""The live dashboard over HTTP (Dash's own protocol, through its Flask test client): pages
built from the database, a trial written meanwhile shown on the next refresh, nothing written
by any route, and a bad storage refused at start."""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from search.errors import StorageError
from search.report import build_app
from tests import db


def _trial(value: float | None, state: TrialState = TrialState.COMPLETE) -> object:
    return create_trial(
        params={"lr": 0.01},
        distributions={"lr": FloatDistribution(1e-4, 1.0, log=True)},
        value=value,
        state=state,
        intermediate_values={1: 0.4, 2: value if value is not None else 0.3},
        user_attrs={"epochs_done": 2, "train_seconds": 3.0},
    )


def _post(client: object, pathname: str, tick: int, shown: str | None, search: str = "") -> object:
    """What the browser's timer asks for: the page callback, as Dash posts it, with the key
    of what the browser shows now."""
    body = {
        "output": "..page.children...shown.data..",
        "outputs": [{"id": "page", "property": "children"}, {"id": "shown", "property": "data"}],
        "inputs": [
            {"id": "url", "property": "pathname", "value": pathname},
            {"id": "url", "property": "search", "value": search},
            {"id": "tick", "property": "n_intervals", "value": tick},
        ],
        "changedPropIds": ["tick.n_intervals"],
        "state": [{"id": "shown", "property": "data", "value": shown}],
    }
    return client.post("/_dash-update-component", json=body)


def _refresh(client: object, pathname: str, tick: int, search: str = "") -> str:
    """The page as a browser that shows nothing yet gets it."""
    response = _post(client, pathname, tick, None, search)
    assert response.status_code == 200, response.data[:500]
    return json.dumps(response.get_json())


def _shown_key(client: object, pathname: str, tick: int) -> str:
    response = _post(client, pathname, tick, None)
    return response.get_json()["response"]["shown"]["data"]


def test_pages_follow_the_database_without_a_reload(tmp_path: Path, study_name: str) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    study = optuna.create_study(study_name=study_name, storage=db.storage(url),
                                direction="maximize")  # fmt: skip
    study.add_trials([_trial(0.9), _trial(None, TrialState.PRUNED)])
    client = build_app(url, refresh_s=0.5).server.test_client()
    layout = json.dumps(client.get("/_dash-layout").get_json())
    assert '"interval": 500' in layout and '"id": "tick"' in layout  # the page's own timer

    def on_disk() -> str:
        """The database's bytes, WAL included, once the test's own writer has closed."""
        db.close_all()
        # The -shm file is SQLite's shared index of the WAL: readers update it too.
        files = [f for f in sorted(tmp_path.glob("studies.db*")) if f.suffix != ".db-shm"]
        return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()

    written = on_disk()
    index = client.get("/")
    assert index.status_code == 200 and b"resnet-hpo" in index.data
    listing = _refresh(client, "/", 1)
    assert study_name in listing and "0.9000 (#0)" in listing
    assert f'"/study/{study_name}"' in listing  # a link to the study's page

    page = _refresh(client, f"/study/{study_name}", 1)
    assert "Trials: COMPLETE 1, PRUNED 1." in page
    # The offline report's sections, in its order.
    titles = ["Optimization history (COMPLETE trials)", "Learning curves", "Best trials",
              "Compute"]  # fmt: skip
    positions = [page.index(f'"children": "{title}"') for title in titles]
    assert positions == sorted(positions)
    assert page.count('"type": "Graph"') >= 2
    assert on_disk() == written  # no route wrote

    # A driver writes a better trial: the next timer tick shows it, no reload.
    study.add_trial(_trial(0.95))
    written = on_disk()
    assert "0.9500 (#2)" in _refresh(client, "/", 2)
    assert "Trials: COMPLETE 2, PRUNED 1." in _refresh(client, f"/study/{study_name}", 2)
    assert on_disk() == written


def test_an_unknown_study_page_says_so(tmp_path: Path, study_name: str) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    optuna.create_study(study_name=study_name, storage=db.storage(url))
    client = build_app(url).server.test_client()
    assert "no study named 'nope'" in _refresh(client, "/study/nope", 1)


def test_a_storage_that_cannot_be_read_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="no study database"):
        build_app(f"sqlite:///{tmp_path / 'missing.db'}")
    assert not (tmp_path / "missing.db").exists()  # read-only: nothing created


def test_serve_refuses_bad_input_with_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from search.cli import main

    assert main(["serve", "--storage", f"sqlite:///{tmp_path / 'missing.db'}"]) == 2
    assert "no study database" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--refresh-s", "0"])
    assert exit_info.value.code == 2
    assert "give 0.5 to 3600 seconds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--port", "70000"])
    assert "a port is 1 to 65535" in capsys.readouterr().err
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    optuna.create_study(study_name="s", storage=db.storage(url))
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        assert main(["serve", "--storage", url, "--port", port]) == 2
    error = capsys.readouterr()
    assert f"cannot listen on 127.0.0.1:{port}" in error.err and "serving" not in error.out


def test_a_page_is_sent_again_only_when_its_study_changed(tmp_path: Path, study_name: str) -> None:
    """Every tick reads only new and unfinished trials; a browser already showing the
    study gets "no update" until a trial lands or a running one reports."""
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    storage = db.storage(url)
    study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize")
    study.add_trials([_trial(0.9), _trial(None, TrialState.PRUNED)])
    running = study.ask({"lr": FloatDistribution(1e-4, 1.0, log=True)})
    client = build_app(url).server.test_client()
    path = f"/study/{study_name}"

    shown = _shown_key(client, path, 1)
    assert _post(client, path, 2, shown).status_code == 204  # nothing changed: no update
    running.report(0.5, step=1)  # a running trial reports an epoch
    assert _post(client, path, 3, shown).status_code == 200
    shown = _shown_key(client, path, 4)
    study.tell(running, 0.97)
    page = _post(client, path, 5, shown)
    assert page.status_code == 200 and "COMPLETE 2, PRUNED 1" in json.dumps(page.get_json())
    assert _post(client, "/", 6, _shown_key(client, "/", 6)).status_code == 204


def test_a_page_that_failed_to_draw_is_drawn_again(
    tmp_path: Path, study_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database error while drawing shows the error, and the next tick tries again
    instead of keeping the error page as if it showed the study."""
    import search.report._dashboard as dashboard
    from search.errors import StorageError

    url = f"sqlite:///{tmp_path / 'studies.db'}"
    study = optuna.create_study(study_name=study_name, storage=db.storage(url),
                                direction="maximize")  # fmt: skip
    study.add_trials([_trial(0.9)])
    client = build_app(url).server.test_client()
    path = f"/study/{study_name}"
    draw = dashboard._study_components

    def locked(*args: object) -> object:
        raise StorageError("database is locked")

    monkeypatch.setattr(dashboard, "_study_components", locked)
    failed = _post(client, path, 1, None).get_json()["response"]
    assert "database is locked" in json.dumps(failed["page"])
    assert failed["shown"]["data"] is None
    monkeypatch.setattr(dashboard, "_study_components", draw)
    again = _post(client, path, 2, None)
    assert again.status_code == 200 and "Optimization history" in json.dumps(again.get_json())


def test_studies_side_by_side(tmp_path: Path, study_name: str) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    storage = db.storage(url)
    for suffix, best in (("a", 0.9), ("b", 0.8)):
        study = optuna.create_study(study_name=f"{study_name}-{suffix}", storage=storage,
                                    direction="maximize")  # fmt: skip
        study.add_trials([_trial(best - 0.1), _trial(best), _trial(None, TrialState.PRUNED)])
    client = build_app(url).server.test_client()
    listing = _refresh(client, "/", 1)
    # Each study's device time: three trials of 3.0 s.
    assert '"id": "compare-pick"' in listing and '"9 s"' in listing
    search = f"?study={study_name}-a&study={study_name}-b"
    page = _refresh(client, "/compare", 1, search)
    assert f"{study_name}-a" in page and "0.9000 (#1)" in page and "0.8000 (#1)" in page
    assert "Best value so far" in page and "median and 10-90% band per study" in page
    assert page.count("<td>9 s</td>") == 2
    one = _refresh(client, "/compare", 1, f"?study={study_name}-a")
    assert "Tick two or more studies" in one
    missing = _refresh(client, "/compare", 1, f"?study={study_name}-a&study=nope")
    assert "no study named 'nope'" in missing
    assert "Read with care" not in page
    losses = optuna.create_study(study_name=f"{study_name}-c", storage=storage)  # minimize
    losses.add_trials([_trial(0.3)])
    mixed = _refresh(client, "/compare", 2, f"?study={study_name}-a&study={study_name}-c")
    assert "Read with care" in mixed and "do not compare" in mixed


def test_the_server_keeps_the_latest_watched_studies(tmp_path: Path, study_name: str) -> None:
    from search.report._dashboard import LiveStudies

    url = f"sqlite:///{tmp_path / 'studies.db'}"
    for suffix in "abc":
        study = optuna.create_study(study_name=f"{study_name}-{suffix}", storage=db.storage(url))
        study.add_trials([_trial(0.5)])
    live = LiveStudies(url, keep=2)
    for suffix in "abca":
        assert len(live.read(f"{study_name}-{suffix}").columns) == 1
    assert list(live._columns) == [f"{study_name}-c", f"{study_name}-a"]
