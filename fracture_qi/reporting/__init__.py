"""Audit runs: papermill notebooks into ``reports/NAME/`` with provenance and checks.

* :mod:`.run` - :func:`~fracture_qi.reporting.run.run_audit` (what ``fracture-qi audit`` and
  ``make demo`` call) and the packaged notebook list;
* :mod:`.verify` - rerun a run from its ``provenance.json`` and compare the tables;
* :mod:`.params` - the notebooks' declared parameters and checking user values;
* :mod:`.provenance` - code version, package versions, input and database-state hashes;
* :mod:`.disclosure` - scanning outputs for patient identifiers held in the database;
* :mod:`.export` - byte-stable CSV tables, notebooks to HTML without code;
* :mod:`.figures` - one chart description rendered by plotly (HTML) and matplotlib (PNG);
* :mod:`.context`, :mod:`.tables` - what the notebooks call (selection, suppressed tables);
* :mod:`.stamp` - the context every output states (filter, mode, cut-off, run, code);
* :mod:`.pack` - the conference pack as slides (PPTX and PDF).

Simulated sites for tests, benchmarks and the demo: :mod:`fracture_qi.simulation`.
"""
