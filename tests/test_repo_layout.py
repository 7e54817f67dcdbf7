"""The repository's own promises: the example manifest validates, the README's commands exist,
the user-facing notebooks are committed without outputs, and docs links resolve."""

from __future__ import annotations

import json
import re
from pathlib import Path

from fracture_qi.cli.main import build_parser
from fracture_qi.manifest import read_manifest_text

REPO = Path(__file__).resolve().parents[1]


def test_example_manifest_validates() -> None:
    m = read_manifest_text((REPO / "data_manifest.yaml").read_text(), REPO, verify=False)
    assert m.version == 1 and m.dicom_sources
    assert str(m.pseudonymisation_key).startswith(("env:", "file:"))


def test_readme_opens_with_the_two_commands() -> None:
    text = (REPO / "README.md").read_text()
    block = re.search(r"```\n(.*?)```", text, re.S)
    assert block is not None
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_every_contract_command_is_built() -> None:
    choices = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name in ["demo", "synth", "index", "screen", "export", "audit", "dashboard", "adjudicate"]:
        assert name in choices, f"fracture-qi {name} missing from the CLI contract"


def test_notebooks_are_committed_without_outputs() -> None:
    notebooks = sorted((REPO / "notebooks").glob("*.ipynb"))
    assert notebooks
    for nb in notebooks:
        data = json.loads(nb.read_text())
        for cell in data["cells"]:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs"), f"{nb.name} has outputs committed"
                assert cell.get("execution_count") is None, f"{nb.name} has execution counts"
                assert not re.search(r"^\s*(def|class) ", "".join(cell["source"]), re.M), (
                    f"{nb.name}: logic belongs in fracture_qi/, not in a notebook"
                )


def test_relative_links_in_docs_resolve() -> None:
    for md in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", md.read_text()):
            assert (md.parent / target).exists(), f"{md.name} links to missing {target}"
