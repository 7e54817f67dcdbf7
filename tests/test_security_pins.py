"""The served stack stays at versions past its published advisories.

Floors (PyPA advisory database): jupyter_server 2.20.0 (CVE-2026-44727, critical; 2.18.0 fixed
CVE-2026-35397 path traversal and others; 2.14.1 fixed CVE-2024-35178), voila 0.5.6 (its
/static route served any readable file, GHSA-2q59-h24c-w6fg), tornado 6.5 (CVE-2025-47287). Raise a floor
here and in pyproject.toml together when a new advisory appears.
"""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FLOORS = {"jupyter_server": (2, 20, 0), "voila": (0, 5, 6), "tornado": (6, 5)}


def _tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


@pytest.mark.parametrize("package", sorted(FLOORS))
def test_installed_version_is_past_advisories(package: str) -> None:
    assert _tuple(version(package)) >= FLOORS[package], (
        f"{package} {version(package)} is older than the advisory floor "
        f"{'.'.join(map(str, FLOORS[package]))}: upgrade it"
    )


@pytest.mark.parametrize("package", sorted(FLOORS))
def test_pyproject_floor_excludes_vulnerable_versions(package: str) -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(d for d in deps if re.match(rf"{package}\b", d, re.I))
    floor = re.search(r">=\s*([\d.]+)", spec)
    assert floor and _tuple(floor.group(1)) >= FLOORS[package], spec
