"""The Comprehensive 3D SR measurement report (TID 1500) of one screened series.

Content tree (highdicom builds the template structure)::

    Imaging Measurement Report (TID 1500)
      Language, Observer: device "fracture-qi" (model id/version), Procedure: CT
      Image Library: the CT images the groups reference (every source image is listed
        in the evidence sequence)
      Imaging Measurements
        Measurement Group (TID 1501), one per vertebra, cranial to caudal
          Tracking identifier "T12" (+ UID), Finding site: T12 vertebra (SCT)
          Algorithm identification: model id and version
          Source image: the axial slice through the body's centre
          Anterior / middle / posterior height (mm)          [99FQI HA/HM/HP]
          Mean attenuation coefficient (HU) of the trabecular bone
          Vertebra assessability: assessed | cut by the field of view | metal | low confidence
          Genant grade 0-3 and deformity type (assessed vertebrae only)
        Measurement Group "bone density": L1 (or nearest level) HU, low-density flag,
          contrast phase
      Qualitative Evaluations (TID 1500 row 10)
        Suspected vertebral fracture (AI flag): present | absent
        Highest Genant grade

The document is COMPLETE, PRELIMINARY (an AI result awaiting a clinician) and UNVERIFIED,
in a new series whose description says it is an AI result, in the same study as the CT
(patient and study modules are copied from the source images by highdicom).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from highdicom.sr import (
    AlgorithmIdentification,
    CodeContentItem,
    Comprehensive3DSR,
    ContainerContentItem,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    RelationshipTypeValues,
    SourceImageForMeasurementGroup,
    TrackingIdentifier,
)
from pydicom.sr.codedict import codes as pcodes

from fracture_qi import __version__
from fracture_qi.dicom.headers import surrogate_uid
from fracture_qi.results_dicom import codes
from fracture_qi.results_dicom.source import ScreenedSeries

log = logging.getLogger(__name__)

#: written into Manufacturer of every object the suite makes
MANUFACTURER = "fracture-qi"
#: SeriesDescription of the SR series: says plainly it is an AI result, not a report
SR_SERIES_DESCRIPTION = "AI RESULT fracture-qi vertebral fracture screen (not verified)"
#: at most 64 characters (LO)
assert len(SR_SERIES_DESCRIPTION) <= 64


def result_uid(*parts: object) -> str:
    """A UID derived from what an object is (screening, kind...): the same object made
    twice gets the same UID, so a repeated send replaces rather than duplicates.

    >>> result_uid("sr", "1.2.3", "m", "1") == result_uid("sr", "1.2.3", "m", "1")
    True
    """
    return surrogate_uid("fracture-qi-result", *parts)


def object_uids(s: ScreenedSeries, kind: str) -> tuple[str, str, int]:
    """SeriesInstanceUID, SOPInstanceUID and InstanceNumber of the *kind* object (``sr``,
    ``sc``, ``seg``) of a screened series.

    The series is one per (source series, model version, kind). The first screening's object
    keeps the UID it always had; a screening that supersedes it (the series gained instances
    and was screened again) is a new instance in the same series, numbered by its revision,
    so the PACS keeps both and shows the newest last.

    >>> from fracture_qi.screening.types import SeriesResult
    >>> s = ScreenedSeries(7, "1.2", "1.2.3", "m", "1", SeriesResult(status="ok"))
    >>> first = object_uids(s, "sr"); s.revision = 2
    >>> again = object_uids(s, "sr")
    >>> again[0] == first[0], again[1] != first[1], (first[2], again[2])
    (True, True, (1, 2))
    """
    parts = (s.series_instance_uid, s.model_id, s.model_version)
    series = result_uid(f"{kind}-series", *parts)
    if s.revision <= 1:
        return series, result_uid(kind, *parts), 1
    return series, result_uid(kind, *parts, "revision", s.screening_id), int(s.revision)


def _algorithm(s: ScreenedSeries) -> AlgorithmIdentification:
    return AlgorithmIdentification(name=s.model_id[:64], version=s.model_version[:64])


def _vertebra_group(s: ScreenedSeries, v: Any, k: int) -> MeasurementsAndQualitativeEvaluations:
    level = v.level
    site = codes.VERTEBRA_CODES.get(level or "", codes.VERTEBRA)
    label = level or f"vertebra {k + 1} (level not named)"
    tracking = TrackingIdentifier(
        uid=result_uid("tracking", s.series_instance_uid, s.model_id, s.model_version, k, level),
        identifier=label,
    )
    algorithm = _algorithm(s)
    measurements = []
    for attr, concept in codes.HEIGHTS.items():
        value = getattr(v, attr)
        if value is not None and np.isfinite(value):
            measurements.append(Measurement(name=concept, value=round(float(value), 2),
                                            unit=codes.MM, algorithm_id=algorithm))
    if v.trabecular_hu is not None and np.isfinite(v.trabecular_hu):
        measurements.append(Measurement(name=codes.MEAN_ATTENUATION,
                                        value=round(float(v.trabecular_hu), 1), unit=codes.HU,
                                        algorithm_id=algorithm))
    quality = str(v.quality or "ok")
    evaluations = [QualitativeEvaluation(codes.QUALITY, codes.QUALITY_VALUES.get(
        quality, codes.QUALITY_VALUES["low_confidence"]))]
    if quality == "ok":  # only assessed vertebrae carry a grade (the others are not graded)
        evaluations.append(QualitativeEvaluation(codes.GENANT_GRADE,
                                                 codes.GENANT_VALUES[int(v.genant_grade)]))
        morph = codes.MORPH_VALUES.get(str(v.morph_type or ""))
        if morph is not None:
            evaluations.append(QualitativeEvaluation(codes.MORPH_TYPE, morph))
    source_images = None
    centre = (v.geometry or {}).get("centre_zyx_mm")
    if centre and s.headers:
        img = s.image_at(float(centre[0]))
        if img is not None:
            source_images = [SourceImageForMeasurementGroup.from_source_image(img)]
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, finding_type=codes.VERTEBRA_ASSESSMENT,
        algorithm_id=algorithm, finding_sites=[FindingSite(site)],
        measurements=measurements or None, qualitative_evaluations=evaluations,
        source_images=source_images,
    )


def _density_group(s: ScreenedSeries) -> MeasurementsAndQualitativeEvaluations | None:
    r = s.result
    evaluations = []
    if r.low_density is not None:
        evaluations.append(QualitativeEvaluation(
            codes.LOW_DENSITY, codes.PRESENT if r.low_density else codes.ABSENT))
    phase = codes.CONTRAST_VALUES.get(str(r.contrast_phase or "unknown"))
    if phase is not None:
        evaluations.append(QualitativeEvaluation(codes.CONTRAST_PHASE, phase))
    measurements = []
    site = codes.VERTEBRA_CODES.get(r.bone_density_level or "", codes.VERTEBRA)
    if r.l1_hu is not None and np.isfinite(r.l1_hu):
        measurements.append(Measurement(
            name=codes.MEAN_ATTENUATION, value=round(float(r.l1_hu), 1), unit=codes.HU,
            algorithm_id=_algorithm(s), finding_sites=[FindingSite(site)]))
    if not measurements and not evaluations:
        return None
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=result_uid("tracking-density", s.series_instance_uid, s.model_id,
                           s.model_version),
            identifier="bone density"),
        finding_type=codes.DENSITY_GROUP, algorithm_id=_algorithm(s),
        finding_sites=[FindingSite(site)], measurements=measurements or None,
        qualitative_evaluations=evaluations or None,
    )


def _study_evaluations(s: ScreenedSeries) -> ContainerContentItem:
    r = s.result
    box = ContainerContentItem(name=codes.QUALITATIVE_EVALUATIONS,
                               relationship_type=RelationshipTypeValues.CONTAINS)
    box.ContentSequence = [
        CodeContentItem(name=codes.STUDY_FLAG, value=codes.PRESENT if r.flagged else codes.ABSENT,
                        relationship_type=RelationshipTypeValues.CONTAINS),
        CodeContentItem(name=codes.MAX_GRADE, value=codes.GENANT_VALUES[int(r.max_grade or 0)],
                        relationship_type=RelationshipTypeValues.CONTAINS),
    ]
    return box


def _library(s: ScreenedSeries) -> list[Any]:
    """The Image Library (TID 1600): the images the groups reference (one axial slice per
    vertebra), else the series' middle image. Every image of the series is listed in the
    evidence sequence anyway; a library of all 400 would only make the SR heavy."""
    chosen: dict[str, Any] = {}
    for v in s.result.vertebrae:
        centre = (v.geometry or {}).get("centre_zyx_mm")
        img = s.image_at(float(centre[0])) if centre and s.headers else None
        if img is not None:
            chosen.setdefault(str(img.SOPInstanceUID), img)
    if not chosen and s.headers:
        mid = s.headers[len(s.headers) // 2]
        chosen[str(mid.SOPInstanceUID)] = mid
    return sorted(chosen.values(), key=lambda d: float(d.ImagePositionPatient[2]))


def measurement_report(s: ScreenedSeries) -> MeasurementReport:
    """The TID 1500 content tree of one screened series (see the module docstring)."""
    device = ObserverContext(
        observer_type=pcodes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=result_uid("device", s.model_id, s.model_version),
            name="fracture-qi", manufacturer_name=MANUFACTURER,
            model_name=f"{s.model_id} {s.model_version}"[:64]),
    )
    groups: list[MeasurementsAndQualitativeEvaluations] = [
        _vertebra_group(s, v, k) for k, v in enumerate(s.result.vertebrae)]
    density = _density_group(s)
    if density is not None:
        groups.append(density)
    if not groups:  # TID 1500 needs one group: say that nothing was assessable
        groups.append(MeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(
                uid=result_uid("tracking-none", s.series_instance_uid, s.model_id,
                               s.model_version), identifier="no vertebra assessed"),
            finding_type=codes.VERTEBRA_ASSESSMENT, algorithm_id=_algorithm(s),
            finding_sites=[FindingSite(codes.THORACOLUMBAR_SPINE)]))
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=device),
        procedure_reported=codes.CT_PROCEDURE, imaging_measurements=groups,
        referenced_images=_library(s) or None,
    )
    report[0].ContentSequence.append(_study_evaluations(s))
    return report


def build_sr(s: ScreenedSeries, *, series_number: int = 9701) -> Comprehensive3DSR:
    """The Comprehensive 3D SR of one screened series, in the CT's study.

    Parameters
    ----------
    s
        The screened series, with its source image headers (``s.headers``); a screening
        that supersedes earlier ones lists their SRs in ``s.predecessors`` (Predecessor
        Documents Sequence).
    series_number
        SeriesNumber of the new SR series.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        A pydicom Dataset (``save_as`` writes it); UIDs derived from the screening, so the
        same result always gives the same SOP Instance UID (:func:`object_uids`).
    """
    series_uid, sop_uid, number = object_uids(s, "sr")
    sr = Comprehensive3DSR(
        evidence=s.headers,
        content=measurement_report(s),
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=number,
        manufacturer=MANUFACTURER,
        is_complete=True, is_final=False, is_verified=False,
        series_description=SR_SERIES_DESCRIPTION,
        # a result on the completed series replaces the one on the incomplete series
        previous_versions=s.predecessors or None,
    )
    sr.SoftwareVersions = [f"fracture-qi {__version__}"[:64], f"{s.model_id} {s.model_version}"[:64]]
    sr.ManufacturerModelName = s.model_id[:64]
    sr.CodingSchemeIdentificationSequence = [codes.coding_scheme_item()]
    return sr


__all__ = ["MANUFACTURER", "SR_SERIES_DESCRIPTION", "build_sr", "measurement_report",
           "object_uids", "result_uid"]
