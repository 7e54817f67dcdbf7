"""The key image of a screened series as a Secondary Capture in the CT's study.

An RGB Secondary Capture Image Storage object made with highdicom from the key image the
screener rendered (the curved mid-sagittal reformat, bodies outlined and coloured by grade,
levels and heights). Patient and study modules are copied from the source CT, so it files
into the same study; nothing identifying is drawn into the pixels (the renderer draws only
anatomy, levels and measurements), hence Burned In Annotation ``NO``. The series says it is
an AI result.
"""

from __future__ import annotations

import numpy as np
from highdicom.sc import SCImage
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from fracture_qi import __version__
from fracture_qi.results_dicom.source import ResultSourceError, ScreenedSeries
from fracture_qi.results_dicom.sr import MANUFACTURER, object_uids

#: SeriesDescription of the key image series
SC_SERIES_DESCRIPTION = "AI RESULT fracture-qi key image (not verified)"
#: the key image is head up (rows run to the feet), anterior on the left (columns run posterior)
PATIENT_ORIENTATION = ("P", "F")


def build_keyimage(s: ScreenedSeries, *, series_number: int = 9702) -> Dataset:
    """The key image of *s* as an RGB Secondary Capture in the same study.

    Raises
    ------
    ResultSourceError
        When the screening has no key image or no source header to take the study from.
    """
    if s.keyimage is None:
        raise ResultSourceError(f"screening {s.screening_id} has no key image")
    if not s.headers:
        raise ResultSourceError(f"screening {s.screening_id}: no source header for the study")
    rgb = np.ascontiguousarray(np.asarray(s.keyimage, dtype=np.uint8)[..., :3])
    series_uid, sop_uid, number = object_uids(s, "sc")
    ref = s.headers[len(s.headers) // 2]
    sc = SCImage.from_ref_dataset(
        ref_dataset=ref, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", patient_orientation=PATIENT_ORIENTATION,
        series_instance_uid=series_uid, series_number=series_number,
        sop_instance_uid=sop_uid, instance_number=number,
        manufacturer=MANUFACTURER, transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=SC_SERIES_DESCRIPTION,
    )
    sc.BurnedInAnnotation = "NO"
    sc.BodyPartExamined = "SPINE"  # what the image shows (and Laterality is then not needed)
    sc.ImageType = ["DERIVED", "SECONDARY", "KEY_IMAGE"]
    sc.SoftwareVersions = [f"fracture-qi {__version__}"[:64], f"{s.model_id} {s.model_version}"[:64]]
    sc.DerivationDescription = (f"AI key image: curved mid-sagittal reformat with vertebral "
                                f"bodies graded by {s.model_id} {s.model_version}")[:1024]
    source = Dataset()
    source.ReferencedSOPClassUID = ref.SOPClassUID
    source.ReferencedSOPInstanceUID = ref.SOPInstanceUID
    sc.SourceImageSequence = [source]
    return sc


__all__ = ["SC_SERIES_DESCRIPTION", "build_keyimage"]
