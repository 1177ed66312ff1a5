"""``resnet-hpo bench report --trials N``: how the read side scales with a study's size.

Writes a synthetic ASHA study of N trials (``store._synthetic``) and times, in one run and on
the same database: Optuna's own ``load_study(...).get_trials()``, the read layer's
``read_trials``, ``resnet-hpo studies`` and ``resnet-hpo report`` (each command in its own
process, as a user runs it: wall time, peak memory, the page's size), and the study page of
``resnet-hpo serve`` (a server process, asked over HTTP as a browser asks: the first draw, a
redraw, and a timer tick when nothing changed).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna

from search.store import close_storage, open_storage, read_trials
from search.store._synthetic import write_synthetic_study

STUDY = "bench-report"


def _timed(run: Any) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


# Runs the CLI in a fresh process and prints that process's own peak memory in KiB: VmHWM
# (the peak of this address space; getrusage's ru_maxrss would carry over the peak of the
# bench process it was forked from), or ru_maxrss where /proc is missing.
_MEASURED = (
    "import re, resource, sys\n"
    "from search.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "try:\n"
    "    status = open('/proc/self/status').read()\n"
    "    peak = int(re.search(r'VmHWM:\\s+(\\d+)', status).group(1))\n"
    "except OSError:\n"
    "    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
    "print(peak, file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def _command(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak memory (MiB) of ``resnet-hpo ARGS`` in its own process."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _MEASURED, *args], check=True,
                          capture_output=True, text=True)  # fmt: skip
    seconds = time.perf_counter() - started
    return seconds, int(done.stderr.strip().splitlines()[-1]) / 1024


def _dashboard(url: str, study: str) -> dict[str, float]:
    """Seconds for the study page of a served dashboard: its first draw, a redraw for a
    browser that shows nothing yet, and a tick for one that shows it already."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "search", "serve", "--storage", url, "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        line = server.stdout.readline() if server.stdout else ""
        if "serving" not in line:
            raise RuntimeError(f"resnet-hpo serve did not start: {line}")
        address = f"http://127.0.0.1:{port}"
        _wait_until_up(address)

        def ask(shown: str | None) -> tuple[float, str | None]:
            started = time.perf_counter()
            key = _ask_page(address, f"/study/{study}", shown)
            return time.perf_counter() - started, key

        try:
            first_s, key = ask(None)
            redraw_s, _ = ask(None)
            unchanged_s, unchanged = ask(key)
            if unchanged is not None:  # else the "no change" figure would time a redraw
                raise RuntimeError("the server redrew an unchanged study page")
        except urllib.error.HTTPError as error:
            server.terminate()
            log = server.communicate(timeout=30)[0]
            raise RuntimeError(
                f"the served study page failed ({error}); the server said:\n{log}"
            ) from None
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {"first_s": first_s, "redraw_s": redraw_s, "unchanged_s": unchanged_s}


def _wait_until_up(address: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(address + "/_dash-layout", timeout=10):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _ask_page(address: str, pathname: str, shown: str | None) -> str | None:
    """The page callback, posted as the browser posts it; the key of what it drew (None
    where the server answered that nothing changed)."""
    body = {
        "output": "..page.children...shown.data..",
        "outputs": [{"id": "page", "property": "children"}, {"id": "shown", "property": "data"}],
        "inputs": [
            {"id": "url", "property": "pathname", "value": pathname},
            {"id": "url", "property": "search", "value": ""},
            {"id": "tick", "property": "n_intervals", "value": 1},
        ],
        "changedPropIds": ["url.pathname"],
        "state": [{"id": "shown", "property": "data", "value": shown}],
    }
    request = urllib.request.Request(
        address + "/_dash-update-component", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=300) as response:
        payload = response.read()
    if response.status == 204:
        return None
    answer = json.loads(payload)["response"]
    drawn = json.dumps(answer["page"])
    if '"className": "error"' in drawn:  # the page drew an error message, not the study
        raise RuntimeError(f"the dashboard could not draw {pathname}: {drawn[:500]}")
    return answer["shown"]["data"]


def run_report_bench(trials: int, folder: Path) -> dict[str, Any]:
    url = f"sqlite:///{folder / 'bench.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(url)
    try:
        written = _timed(lambda: write_synthetic_study(storage, STUDY, trials))
        optuna_s = _timed(
            lambda: optuna.load_study(study_name=STUDY, storage=storage).get_trials(deepcopy=False)
        )
        columns_s = _timed(lambda: read_trials(storage.engine, STUDY))
    finally:
        close_storage(storage)
    studies_s, studies_mib = _command(["studies", "--storage", url])
    page = folder / "report.html"
    report_s, report_mib = _command(["report", "--study", STUDY, "--storage", url, "-o", str(page)])
    dashboard = _dashboard(url, STUDY)
    return {
        "trials": trials,
        "write_s": round(written, 2),
        "optuna_get_trials_s": round(optuna_s, 3),
        "read_trials_s": round(columns_s, 3),
        "read_speedup": round(optuna_s / columns_s, 1),
        "studies_s": round(studies_s, 2),
        "report_s": round(report_s, 2),
        "studies_peak_mib": round(studies_mib),
        "report_peak_mib": round(report_mib),
        "report_mb": round(page.stat().st_size / 1e6, 2),
        "dashboard_first_s": round(dashboard["first_s"], 2),
        "dashboard_redraw_s": round(dashboard["redraw_s"], 2),
        "dashboard_unchanged_s": round(dashboard["unchanged_s"], 3),
    }


def main(argv: Sequence[str] | None = None, prog: str = "resnet-hpo bench report") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10_000, help="trials in the study")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.trials < 1:
        print(f"{prog}: error: --trials must be >= 1", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="resnet-hpo-bench-") as folder:
        if not args.json:
            print(f"writing a synthetic ASHA study of {args.trials:,} trials...", flush=True)
        result = run_report_bench(args.trials, Path(folder))
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"wrote the study in {result['write_s']} s\n"
        f"optuna get_trials: {result['optuna_get_trials_s']:>7} s\n"
        f"read_trials:       {result['read_trials_s']:>7} s  ({result['read_speedup']}x faster)\n"
        f"studies:           {result['studies_s']:>7} s\n"
        f"report:            {result['report_s']:>7} s, peak {result['report_peak_mib']} MiB, "
        f"{result['report_mb']} MB page\n"
        f"serve, study page: {result['dashboard_first_s']:>7} s first draw, "
        f"{result['dashboard_redraw_s']} s redraw, {result['dashboard_unchanged_s']} s tick "
        "with nothing changed"
    )
    return 0
