"""One seeded generator of a simulated service: database rows with known truth.

The synthetic CT cohort (:mod:`fracture_qi.synth`) makes real DICOM and runs every stage;
that is right for an end-to-end demo but far too slow for a 500,000-study dashboard
benchmark, a test that needs a populated database in a second, or a two-year service history
a QI lead can present. :func:`populate` writes the rows those stages would have written
(patients, studies, chosen series, screening runs and results of one or two AI models, the
worklist, nurse reads with corrections, FLS episodes with every FLS-DB KPI field) straight
into the tables; :func:`make_site` wraps it in a manifest and a SQLite database, and
:func:`make_service_history` writes the demo's simulated trust (two years, tens of thousands
of CTs, two models, a QI change part-way through).

Every row is marked synthetic where the schema allows (adjudication events
``simulated=True``; names invented; NHS numbers in the 999 test range; manifests
``synthetic: true``). The same seed always writes the same rows.
"""

from fracture_qi.simulation.service import (
    ModelSpec,
    ServiceParams,
    SimulationParams,
    SimulationResult,
    populate,
)
from fracture_qi.simulation.site import (
    identifiers,
    make_fixture_site,
    make_service_history,
    make_site,
    manifest_db_url,
)

__all__ = [
    "ModelSpec",
    "ServiceParams",
    "SimulationParams",
    "SimulationResult",
    "identifiers",
    "make_fixture_site",
    "make_service_history",
    "make_site",
    "manifest_db_url",
    "populate",
]
