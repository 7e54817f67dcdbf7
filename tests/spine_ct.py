"""A small CT study with a spine the reference screener finds, written as DICOM, for the
PACS service tests (listener, results to PACS, vendor round trip).

The phantom is :func:`fracture_qi.synth.phantom.make_spine_volume` (an abdomen-pelvis field
of view at 2.5 x 1.8 x 1.8 mm, 150 x 160 x 160 voxels: about 8 MB of DICOM), written slice by
slice by :func:`tests.dicomgen.write_ct_series` with a 78-year-old's headers; with
``fractured=True`` L1 has a severe wedge fracture, so the study is flagged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests import dicomgen

SHAPE = (150, 160, 160)
SPACING = (2.5, 1.8, 1.8)


def write_spine_study(folder: Path, *, fractured: bool = True, seed: int = 42,
                      study_uid: str | None = None, **headers: object) -> list[Path]:
    """Write one study (one axial series) into *folder*; returns the files in slice order."""
    from fracture_qi.synth import phantom

    rng = np.random.default_rng(seed)
    fractures = [("L1", "wedge", 3)] if fractured else []
    spec = phantom.random_patient_spec(rng, age=78, sex="F", fractures=fractures)
    vol, _ = phantom.make_spine_volume(spec, fov="abdomen_pelvis", shape=SHAPE, spacing=SPACING,
                                       rng=rng, noise_sd=15)
    study = study_uid or dicomgen.new_uid("spine-study", seed, fractured)
    return dicomgen.write_ct_series(
        folder, n=vol.hu.shape[0], rows=SHAPE[1], cols=SHAPE[2], spacing=SPACING[0],
        hu=vol.hu, StudyInstanceUID=study, PixelSpacing=[SPACING[1], SPACING[2]],
        SliceThickness=str(SPACING[0]), PatientAge="078Y", **headers)
