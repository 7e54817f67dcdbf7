"""The command line starts at once: heavy modules are imported only where they are used.

Issue 20: ``fracture-qi --help`` and ``fracture-qi screen`` on an empty folder in under 1.5 s.
The time itself is measured in ``benchmarks/startup_speed.py`` (timed tests are flaky on a
shared machine); what these tests guard is its cause: which modules a command pulls in. Each
case runs in a fresh interpreter and lists the heavy top-level packages in ``sys.modules``.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

#: packages that cost a few hundred ms to seconds to import on the 2-core dev machine
#: (``python -X importtime``): none of them is needed to print help or to find nothing to do
HEAVY = ("torch", "pandas", "matplotlib", "sqlalchemy", "alembic", "scipy", "statsmodels",
         "plotly", "dask", "distributed", "ipywidgets", "nbclient", "papermill", "onnxruntime",
         "nvidia")


def _modules_after(argv: list[str], cwd: Path) -> tuple[int, list[str], str]:
    """Run ``fracture-qi ARGV`` in a fresh interpreter; (exit status, heavy modules, stdout)."""
    code = textwrap.dedent(f"""
        import json, sys
        from fracture_qi.cli.main import main
        try:
            rc = main({argv!r})
        except SystemExit as e:
            rc = e.code or 0
        heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))
        print("\\nHEAVY=" + json.dumps([rc, heavy]))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=cwd, timeout=120, check=False)
    assert "HEAVY=" in proc.stdout, proc.stderr[-2000:]
    out, _, tail = proc.stdout.rpartition("HEAVY=")
    rc, heavy = json.loads(tail)
    return int(rc), heavy, out


def test_help_imports_no_heavy_module(tmp_path: Path) -> None:
    rc, heavy, out = _modules_after(["--help"], tmp_path)
    assert rc == 0 and "usage: fracture-qi" in out
    assert heavy == [], f"fracture-qi --help imported {heavy}: import them where they are used"


@pytest.mark.parametrize("command", ["screen", "index", "export", "audit", "dashboard",
                                     "adjudicate", "synth", "demo", "listen", "pacs"])
def test_subcommand_help_imports_no_heavy_module(command: str, tmp_path: Path) -> None:
    rc, heavy, out = _modules_after([command, "--help"], tmp_path)
    assert rc == 0 and f"fracture-qi {command}" in out
    assert heavy == [], f"fracture-qi {command} --help imported {heavy}"


def test_screen_of_an_empty_folder_loads_no_model(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    out_dir = tmp_path / "out"
    rc, heavy, out = _modules_after(["screen", str(empty), "--out", str(out_dir),
                                     "--no-progress"], tmp_path)
    assert rc == 0, out
    assert "nothing to screen" in out
    # the outputs are still written, with their header and no row
    with open(out_dir / "studies.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0][:3] == ["path", "study_instance_uid", "series_instance_uid"]
    assert len(rows) == 1
    assert heavy == [], (f"fracture-qi screen on an empty folder imported {heavy}: the model "
                         "(torch), pandas and SQLAlchemy belong to the series it screens")


def test_screen_still_refuses_a_wrong_model_checksum_before_scanning(tmp_path: Path) -> None:
    """Building the model late must not let a wrong plug-in file through unnoticed."""
    model = tmp_path / "site.onnx"
    model.write_bytes(b"not the validated model")
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, heavy, out = _modules_after(["screen", str(empty), "--out", str(tmp_path / "o"),
                                     "--model", str(model), "--model-sha256", "0" * 64],
                                    tmp_path)
    assert rc == 2
    assert "torch" not in heavy and "onnxruntime" not in heavy
