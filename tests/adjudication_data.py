"""Small, realistic databases for the adjudication tests (not a test module).

:func:`seed_cases` inserts patients, studies, chosen series, a screening run, screenings and
vertebra findings (with overlay geometry) the way ``index`` + ``screen`` would, optionally with
real DICOM files of a small spine phantom (via ``tests/dicomgen.py``) so the viewer and the
Voila app have pixels to show. All identifiers are fictitious (NHS numbers in the 999 range).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import Engine

from fracture_qi.store.db import connect, session_scope
from fracture_qi.store.schema import (
    Instance,
    Patient,
    Screening,
    ScreeningRun,
    Series,
    Study,
    VertebraFinding,
)

#: phantom geometry: slices, matrix, spacing (z, y, x) mm
N_SLICES, ROWS, COLS = 60, 64, 64
SPACING = (2.5, 0.8, 0.8)
#: the levels drawn in the phantom, caudal to cranial (z grows upwards)
PHANTOM_LEVELS = ["L4", "L3", "L2", "L1", "T12"]
#: body height and disc gap in mm
BODY_MM, DISC_MM = 22.5, 7.5


def make_store(url: str) -> Engine:
    """An engine on a migrated database (the store's own migrations, triggers included)."""
    from fracture_qi.store import open_store

    return open_store(url)


def sqlite_url(folder: Path, name: str = "fqi.db") -> str:
    return f"sqlite:///{folder / name}"


def phantom_hu(collapsed: str | None = "L1") -> tuple[np.ndarray, list[dict]]:
    """A (z, y, x) HU phantom: soft-tissue body, stacked vertebral bodies, one wedge.

    Returns the volume and, per level, the overlay geometry the screener would report
    (mm on the volume grid, origin at voxel [0, 0, 0]).
    """
    dz, dy, dx = SPACING
    hu = np.full((N_SLICES, ROWS, COLS), -1000, dtype=np.int16)
    yy, xx = np.mgrid[0:ROWS, 0:COLS]
    body = (yy - ROWS / 2) ** 2 + (xx - COLS / 2) ** 2 < (0.46 * ROWS) ** 2
    hu[:, body] = 40
    y_ant, y_post = int(ROWS * 0.40), int(ROWS * 0.72)
    x0, x1 = int(COLS * 0.38), int(COLS * 0.62)
    geoms = []
    z_mm = 10.0
    for level in PHANTOM_LEVELS:
        ha = hp = BODY_MM
        if level == collapsed:
            ha = BODY_MM * 0.55  # a moderate-severe anterior wedge
        for i in range(y_ant, y_post):
            frac = (i - y_ant) / max(y_post - y_ant - 1, 1)
            h = ha + (hp - ha) * frac
            k0, k1 = int(round(z_mm / dz)), int(round((z_mm + h) / dz))
            hu[k0:k1, i, x0:x1] = 250
            hu[k0:k0 + 1, i, x0:x1] = 700  # endplates
            hu[max(k1 - 1, k0):k1, i, x0:x1] = 700
        hm = (ha + hp) / 2
        ya, yp = y_ant * dy, (y_post - 1) * dy
        geoms.append({
            "level": level,
            "ha_mm": round(ha, 1), "hm_mm": round(hm, 1), "hp_mm": round(hp, 1),
            "geometry": {
                "centre_zyx_mm": [z_mm + hm / 2, (ya + yp) / 2, COLS / 2 * dx],
                # morphometry's landmark order: superior anterior, middle, posterior, then
                # inferior anterior, middle, posterior
                "points_zy_mm": [[z_mm + ha, ya], [z_mm + hm, (ya + yp) / 2], [z_mm + hp, yp],
                                 [z_mm, ya], [z_mm, (ya + yp) / 2], [z_mm, yp]],
                "x_mm": COLS / 2 * dx,
            },
        })
        z_mm += BODY_MM + DISC_MM
    return hu, geoms


@dataclass
class SeededStudy:
    study_id: int
    screening_id: int
    flagged: bool
    study_date: dt.date


def seed_cases(
    engine: Engine,
    n: int = 6,
    *,
    dicom_dir: Path | None = None,
    flagged: list[bool] | None = None,
    start: dt.date = dt.date(2025, 1, 6),
    uid_prefix: str = "1.2.826.0.1.3680043.10.1001",
) -> list[SeededStudy]:
    """Insert *n* screened studies (the first flagged when *flagged* is not given: alternate).

    With *dicom_dir*, each study gets a real phantom DICOM series written there (one
    shared pixel volume, its own UIDs) and ``instances`` rows pointing at the files.
    """
    from tests.dicomgen import write_ct_series

    flags = flagged if flagged is not None else [i % 2 == 0 for i in range(n)]
    hu, geoms = phantom_hu()
    out: list[SeededStudy] = []
    with session_scope(engine) as s:
        run = ScreeningRun(model_id="fqi-reference", model_version="0.1.0", params={},
                           status="ok")
        s.add(run)
        s.flush()
        for i in range(n):
            key = hashlib.sha256(f"{uid_prefix}|{i}".encode()).hexdigest()
            p = Patient(patient_key=key, nhs_number=f"999 000 {i:04d}",
                        mrn=f"MRN{1000 + i}", name=f"TESTPATIENT, Alice {i}",
                        birth_date=dt.date(1946, 3, 1) + dt.timedelta(days=37 * i), sex="F")
            s.add(p)
            s.flush()
            date = start + dt.timedelta(days=7 * i)
            st = Study(study_instance_uid=f"{uid_prefix}.{i}.1", patient_id=p.id,
                       accession_number=f"ACC{5000 + i}", study_date=date,
                       description="CT CHEST ABDOMEN PELVIS", site="Test General",
                       referral_source=["emergency", "inpatient", "outpatient", "gp"][i % 4],
                       age_years=78.0 + i, eligible=True)
            s.add(st)
            s.flush()
            se = Series(series_instance_uid=f"{uid_prefix}.{i}.2", study_id=st.id,
                        modality="CT", chosen=True, n_instances=N_SLICES,
                        slice_thickness=SPACING[0], pixel_spacing=SPACING[1], status="ok")
            s.add(se)
            s.flush()
            st.chosen_series_id = se.id
            if dicom_dir is not None:
                positions = [[0.0, 0.0, k * SPACING[0]] for k in range(N_SLICES)]
                # dicomgen writes axial slices top row = anterior, as the canonical volume
                paths = write_ct_series(
                    dicom_dir / f"study{i}", n=N_SLICES, rows=ROWS, cols=COLS,
                    spacing=SPACING[0], positions=positions, hu=hu,
                    StudyInstanceUID=st.study_instance_uid,
                    SeriesInstanceUID=se.series_instance_uid,
                )
                for k, path in enumerate(paths):
                    s.add(Instance(series_id=se.id, sop_instance_uid=f"{uid_prefix}.{i}.3.{k}",
                                   path=str(path), instance_number=k + 1, z=k * SPACING[0]))
            flag = bool(flags[i])
            sc = Screening(run_id=run.id, series_id=se.id, model_id="fqi-reference",
                           model_version="0.1.0", status="ok", flagged=flag,
                           score=0.9 if flag else 0.1, max_grade=2 if flag else 0,
                           n_vertebrae=len(geoms), l1_hu=95.0, low_density=True)
            s.add(sc)
            s.flush()
            for g in geoms:
                grade = (2 if g["level"] == "L1" else 0) if flag else 0
                s.add(VertebraFinding(
                    screening_id=sc.id, level=g["level"], genant_grade=grade,
                    morph_type="wedge" if grade else "normal", ha_mm=g["ha_mm"],
                    hm_mm=g["hm_mm"], hp_mm=g["hp_mm"], score=0.8 if grade else 0.05,
                    geometry=g["geometry"]))
            out.append(SeededStudy(st.id, sc.id, flag, date))
    return out


def fresh_engine(tmp_path: Path) -> Engine:
    """A migrated SQLite database in *tmp_path*."""
    return make_store(sqlite_url(tmp_path))


__all__ = ["connect", "fresh_engine", "make_store", "phantom_hu", "seed_cases", "sqlite_url"]


def bulk_studies(engine: Engine, n: int, prefix: str = "1.2.826.0.1.3680043.10.3003") -> list[int]:
    """Insert *n* bare eligible studies fast (Core executemany); return their ids."""
    from sqlalchemy import insert, select

    with engine.begin() as conn:
        conn.execute(insert(Study), [
            {"study_instance_uid": f"{prefix}.{i}", "eligible": True,
             "study_date": dt.date(2025, 1, 1) + dt.timedelta(days=i % 365)}
            for i in range(n)])
        return list(conn.execute(select(Study.id).where(
            Study.study_instance_uid.like(f"{prefix}.%")).order_by(Study.id)).scalars())


def save_loop(url: str, reviewer: str, study_ids: list[int], ack_path: str,
              pause_s: float = 0.0) -> None:
    """Worker for the concurrency and crash tests (run in its own process).

    Saves one decision per study; after each save returns, appends ``ok <event_uid>`` to
    *ack_path* and fsyncs it (the acknowledgement a nurse would see). Any error the user
    would see is written as ``error <type>: <message>``.
    """
    import os
    import time
    import uuid

    from fracture_qi.adjudication.decisions import record_decision

    engine = connect(url)
    with open(ack_path, "a", buffering=1) as ack:
        for i, sid in enumerate(study_ids):
            uid = str(uuid.uuid4())
            form = {"study_id": sid, "decision": "confirmed" if i % 2 else "not_confirmed",
                    "event_uid": uid, "note": f"worker {reviewer} save {i}"}
            if i % 2:
                form.update(levels=[{"level": "T12", "grade": 1 + i % 3}],
                            previously_known="none", action="refer_fls")
            try:
                record_decision(engine, form, reviewer, "test")
            except Exception as e:  # every failure is reported to the test, none hidden
                ack.write(f"error {type(e).__name__}: {e}\n")
                continue
            ack.write(f"ok {uid}\n")
            ack.flush()
            os.fsync(ack.fileno())
            if pause_s:
                time.sleep(pause_s)
    engine.dispose()
