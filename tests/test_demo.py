"""``make demo``: training in two processes where the machine has the cores (issue 14), one otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unet_patches import demo
from unet_patches.models.checkpoint import load_checkpoint

REPO_PARAMS = Path(__file__).resolve().parent.parent / "parameters.json"


def test_two_processes_where_there_are_two_cores(monkeypatch):
    monkeypatch.setattr(demo.os, "cpu_count", lambda: 1)
    assert demo.training_processes() == 1
    monkeypatch.setattr(demo.os, "cpu_count", lambda: 2)
    assert demo.training_processes() == 2


def tiny_params(tmp_path):
    values = json.loads(REPO_PARAMS.read_text())
    values["synthetic"].update(n_train=6, n_test=2)
    values["patches"]["per_image"] = 2
    values["model"].update(base_width=4, depth=2)
    values["training"].update(samples_per_epoch=32, precision="fp32")
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(values))
    return path


@pytest.mark.distributed
def test_the_demo_trains_in_two_processes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert demo.run(str(tiny_params(tmp_path)), minutes=0.03, processes=2) == 0
    out = capsys.readouterr().out
    assert "2 processes" in out and "full-image mIoU on 2 unseen test images" in out
    last = load_checkpoint(tmp_path / "checkpoints" / "demo" / "last.pt")
    assert last["epoch"] >= 1 and (tmp_path / "data" / "demo" / "demo_result.json").is_file()
    assert (
        json.loads((tmp_path / "data" / "demo" / "training_settings.json").read_text())["training"]["run_name"]
        == "demo"
    )


@pytest.mark.slow
def test_the_demo_on_nuclei(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    params = tiny_params(tmp_path)
    values = json.loads(params.read_text())
    values["nuclei"].update(height=96, width=96)
    params.write_text(json.dumps(values))
    assert demo.main(["--params", str(params), "--minutes", "0.03", "--processes", "1", "--kind", "nuclei"]) == 0
    out = capsys.readouterr().out
    assert "(nuclei) in data/demo/nuclei" in out and "boundary" in out
    assert (tmp_path / "data" / "demo" / "nuclei" / "train" / "instances" / "0000.png").is_file()
    assert load_checkpoint(tmp_path / "checkpoints" / "demo" / "best.pt")["class_names"] == [
        "background",
        "interior",
        "boundary",
    ]
