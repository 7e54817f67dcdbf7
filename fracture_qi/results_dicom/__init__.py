"""Screening results as DICOM objects, into the study they came from, and back.

* :mod:`.codes`: the coded concepts (SNOMED CT, DICOM, UCUM and the suite's own ``99FQI``
  scheme for what no standard codes: Genant grade, deformity type, quality code...).
* :mod:`.source`: a screened series as the writers need it (its result, read back from the
  store; its source image headers; its key image).
* :mod:`.sr`: the Comprehensive 3D SR measurement report (TID 1500), one per series.
* :mod:`.sc`: the key image as a Secondary Capture in the same study.
* :mod:`.seg`: the vertebral bodies as a DICOM Segmentation (approximate: see its docstring).
* :mod:`.send`: build what is due and send it to the PACS (C-STORE or STOW-RS), once.
* :mod:`.read`: read TID 1500 SRs (this suite's or another AI's), simple vendor SRs and
  flagged Secondary Captures back into :class:`~fracture_qi.screening.types.SeriesResult`
  (the ``vendor`` model's DICOM mode).

This package sits beside :mod:`fracture_qi.screening` (it needs the result types and the
store); the screening engine does not import it: sending is a separate step that
``fracture-qi screen --manifest M`` and ``fracture-qi listen`` call after screening.
"""
