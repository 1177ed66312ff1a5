from __future__ import annotations

import json
import statistics

import pytest

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
