"""Data report pictures and summaries, and the ``fer-pipeline data`` command."""

from __future__ import annotations

import json
import subprocess
import sys

from PIL import Image

from pipeline.cli import main
from pipeline.data_steps import run_data_steps
from serving.contract import CLASS_NAMES
from tests.helpers import fer_root


def test_data_steps_and_report(subset, tmp_path):
    result = run_data_steps(str(subset), tmp_path, progress=False)
    report = result["report"]
    with Image.open(report["distribution"]) as img:
        assert img.format == "PNG" and img.size[0] >= 600
    with Image.open(report["samples"]) as img:
        assert img.format == "PNG" and img.size[1] > img.size[0] * 0.5
    html = open(report["html"]).read()
    assert html.count("data:image/png;base64,") == 2  # self-contained for the KFP UI
    md = open(report["markdown"]).read()
    assert "21 read" not in md and "35 read = 35 accepted + 0 rejected" in md
    for name in CLASS_NAMES:
        assert name in md
    assert json.loads((tmp_path / "class_weights.json").read_text()).keys() == {
        str(i) for i in range(7)}


def test_cli_data_prints_summary(subset, tmp_path, capsys):
    assert main(["data", str(subset), "--out", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "35 read = 35 accepted + 0 rejected" in out
    assert "total" in out and "class weights:" in out
    assert (tmp_path / "dataset" / "faces.npz").is_file()


def test_cli_json(subset, tmp_path, capsys):
    assert main(["data", str(subset), "--out", str(tmp_path), "--quiet", "--json",
                 "--no-report"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["manifest"]["accepted"] == 35
    assert result["preprocess"]["counts"]["val"]  # val carved from train


def test_cli_missing_source_exits_non_zero(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "data", str(tmp_path / "nope"),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "error: source does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_head_csv_reports_four_rows_then_refuses_to_train(tmp_path, capsys):
    code = main(["data", str(fer_root() / "fer2013_head.csv"), "--out", str(tmp_path), "--quiet"])
    captured = capsys.readouterr()
    assert code == 2
    assert "4 read = 4 accepted + 0 rejected" in captured.out
    assert "no training example for class(es)" in captured.err


def test_cli_stale_manifest_is_not_reported(subset, tmp_path, capsys):
    assert main(["data", str(subset), "--out", str(tmp_path), "--quiet", "--no-report"]) == 0
    capsys.readouterr()
    assert main(["data", str(tmp_path / "missing"), "--out", str(tmp_path), "--quiet"]) == 2
    assert "35 read" not in capsys.readouterr().out
