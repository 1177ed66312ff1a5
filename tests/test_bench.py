from __future__ import annotations

import json
import statistics

import pytest
import ray

from search.cli import main


def test_bench_trainer_prints_both_pipelines_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "trainer", "--depth", "8", "--device", "cpu", "--batch-size", "128"]
    assert main([*argv, "--train-images", "1024", "--repeats", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"ours_images_per_s", "seed_images_per_s", "ratio", "device", "depth"} <= set(result)
    assert result["ours_images_per_s"] > 0 and result["seed_images_per_s"] > 0
    # Medians of the alternating runs, not a best case, and the ratio of those medians.
    ours, seeds = statistics.median(result["ours_runs"]), statistics.median(result["seed_runs"])
    assert result["ours_images_per_s"] == pytest.approx(ours, abs=0.1)
    assert result["seed_images_per_s"] == pytest.approx(seeds, abs=0.1)
    assert result["ratio"] == pytest.approx(ours / seeds, abs=0.01)
    assert result["depth"] == 8 and result["device"].startswith("cpu")
    assert len(result["ours_runs"]) == len(result["seed_runs"]) == 2


def test_bench_trainer_packs_trials(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "trainer", "--depth", "8", "--device", "cpu", "--trials-per-device", "2"]
    assert main([*argv, "--train-images", "1024", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "ours:" in out and "seeds:" in out and "ratio:" in out
    assert "2 trial(s) on the device" in out


def test_bench_refuses_cuda_without_a_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["bench", "trainer", "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.usefixtures("ray_session")
def test_bench_overhead_runs_every_system_through_its_database(
    capsys: pytest.CaptureFixture[str],
) -> None:
    trials, epochs = 3, 2
    argv = ["bench", "overhead", "--trials", str(trials), "--epochs", str(epochs)]
    assert main([*argv, "--epoch-s", "0", "--concurrent", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    systems = [r["system"] for r in result["results"]]
    assert systems[0].startswith("ours") and systems[-1].startswith("plain optuna")
    assert sum("reuse_actors" in s for s in systems) == 2
    for row in result["results"]:
        assert row["trials"] == trials and row["seconds"] > 0
        assert row["trials_per_s"] == pytest.approx(trials / row["seconds"])
        # Each trial's row, its parameter, its value and every epoch's value at least.
        assert row["rows"] >= trials * (3 + epochs)
        assert row["driver_cpu_per_trial_s"] == pytest.approx(row["driver_cpu_s"] / trials)
        assert row["driver_cpu_s"] > 0


def test_bench_overhead_runs_the_systems_asked_for(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--systems`` picks and orders them (a large ``--concurrent`` run needs only ours);
    a name it does not know is one line and exit 2. Plain Optuna alone starts no Ray."""

    def no_ray(*args: object, **kwargs: object) -> None:
        raise AssertionError("plain Optuna alone started Ray")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_ray)
    argv = ["bench", "overhead", "--trials", "1", "--epochs", "1", "--epoch-s", "0"]
    assert main([*argv, "--concurrent", "1", "--systems", "optuna"]) == 0
    out = capsys.readouterr().out
    assert "plain optuna" in out and "ours" not in out and "driver CPU/trial" in out
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--systems", "ours,tune"])
    assert exit_info.value.code == 2
    assert "--systems: unknown tune" in capsys.readouterr().err


def test_bench_retention_tells_trial_ends_on_a_synthetic_study(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["bench", "retention", "--trials", "200", "--ends", "5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["trials"] == 200 and result["ends"] == 5
    assert result["first_end_s"] > 0 and result["end_ms"] > 0
    assert main(["bench", "retention", "--trials", "200", "--ends", "2"]) == 0
    assert "200 trials: the first trial end (ranks the whole study)" in capsys.readouterr().out
    for bad in (["--ends", "0"], ["--trials", "10"]):  # 10 trials hold no COMPLETE one
        with pytest.raises(SystemExit) as exit_info:
            main(["bench", "retention", *bad])
        assert exit_info.value.code == 2
    assert "hold 0 COMPLETE" in capsys.readouterr().err
