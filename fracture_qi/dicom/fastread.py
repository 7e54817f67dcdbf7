"""A fast reader for the common case: one image file, little-endian, only the tags we use.

``pydicom.dcmread`` spends about 4 ms per file building every element of a vendor header
(a Siemens CT slice has ~140), which for a 400-slice series costs more than decoding the
uncompressed pixels. :func:`read_fast` walks the elements with :mod:`struct`, skips
sequences without parsing their items, keeps only :data:`WANTED` top-level elements as raw
elements (pydicom converts them lazily, with the file's character set), and returns an
ordinary :class:`pydicom.dataset.Dataset` with file meta.

Deflated files are inflated with :mod:`zlib` and parsed the same way. It returns ``None``
(the caller then uses ``dcmread``) for anything out of its lane: no ``DICM`` marker,
big-endian data, multi-frame functional groups, DICOMDIR, anything it cannot parse.
It raises only for a file cut short (``TRUNCATED``), which ``dcmread`` would read silently.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import BaseTag as Tag  # no validation: tags come from the parser

from fracture_qi.dicom.reasons import ReasonCode
from fracture_qi.errors import DicomError

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"

#: top-level elements :mod:`fracture_qi.dicom.volume` uses (tag -> VR for implicit files)
WANTED: dict[int, str] = {
    0x00080005: "CS",  # SpecificCharacterSet
    0x00080008: "CS",  # ImageType
    0x00080016: "UI",  # SOPClassUID
    0x00080018: "UI",  # SOPInstanceUID
    0x00080060: "CS",  # Modality
    0x00080070: "LO",  # Manufacturer
    0x00081090: "LO",  # ManufacturerModelName
    0x00180050: "DS",  # SliceThickness
    0x00181210: "SH",  # ConvolutionKernel
    0x0020000D: "UI",  # StudyInstanceUID
    0x0020000E: "UI",  # SeriesInstanceUID
    0x00200013: "IS",  # InstanceNumber
    0x00200032: "DS",  # ImagePositionPatient
    0x00200037: "DS",  # ImageOrientationPatient
    0x00280002: "US",  # SamplesPerPixel
    0x00280004: "CS",  # PhotometricInterpretation
    0x00280008: "IS",  # NumberOfFrames
    0x00280010: "US",  # Rows
    0x00280011: "US",  # Columns
    0x00280030: "DS",  # PixelSpacing
    0x00280100: "US",  # BitsAllocated
    0x00280101: "US",  # BitsStored
    0x00280102: "US",  # HighBit
    0x00280103: "US",  # PixelRepresentation
    0x00281052: "DS",  # RescaleIntercept
    0x00281053: "DS",  # RescaleSlope
    0x7FE00010: "OW",  # PixelData
}
#: their presence sends the file to dcmread (multi-frame geometry, media directories)
FALLBACK = frozenset({0x52009229, 0x52009230, 0x00041220})

_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_u32 = struct.Struct("<I")
_hh = struct.Struct("<HH")
_hhi = struct.Struct("<HHI")
_hh2sh = struct.Struct("<HH2sH")


def _truncated(path: str, what: str) -> DicomError:
    return DicomError(ReasonCode.TRUNCATED, path, f"file ends inside {what}. Fix: re-fetch or "
                      "re-export the file (the copy was cut short)")


def _skip_undefined(buf: bytes, pos: int, implicit: bool, path: str) -> int:
    """Position after the sequence delimiter of an undefined-length SQ or pixel data."""
    end = len(buf)
    while True:
        if pos + 8 > end:
            raise _truncated(path, "a sequence")
        group, elem, length = _hhi.unpack_from(buf, pos)
        tag = (group << 16) | elem
        pos += 8
        if tag == _SEQ_END:
            return pos
        if tag != _ITEM:
            raise ValueError(f"unexpected tag {tag:08X} in a sequence")
        if length == _UNDEFINED:
            pos = _skip_dataset_until_item_end(buf, pos, implicit, path)
        else:
            pos += length
            if pos > end:
                raise _truncated(path, "a sequence item")


def _skip_dataset_until_item_end(buf: bytes, pos: int, implicit: bool, path: str) -> int:
    end = len(buf)
    while True:
        if pos + 8 > end:
            raise _truncated(path, "a sequence item")
        group, elem = _hh.unpack_from(buf, pos)
        tag = (group << 16) | elem
        if tag == _ITEM_END:
            return pos + 8
        pos, _, _, _ = _next_element(buf, pos, implicit, path)


def _next_element(buf: bytes, pos: int, implicit: bool, path: str
                  ) -> tuple[int, int, bytes | None, tuple[int, int, int]]:
    """Parse the element at *pos*: (next pos, tag, VR or None, (start, end, length)).

    For an undefined-length element the value excludes the sequence delimiter item and
    the length is 0xFFFFFFFF, as pydicom's own reader keeps them.
    """
    end = len(buf)
    if pos + 8 > end:
        raise _truncated(path, "an element header")
    if implicit:
        group, elem, length = _hhi.unpack_from(buf, pos)
        vr = None
        start = pos + 8
    else:
        group, elem, vr, short = _hh2sh.unpack_from(buf, pos)
        if vr in _LONG_VRS:
            if pos + 12 > end:
                raise _truncated(path, "an element header")
            length = _u32.unpack_from(buf, pos + 8)[0]
            start = pos + 12
        else:
            length = short
            start = pos + 8
    tag = (group << 16) | elem
    if length == _UNDEFINED:
        stop = _skip_undefined(buf, start, implicit, path)
        return stop, tag, vr, (start, stop - 8, _UNDEFINED)
    stop = start + length
    if stop > end:
        raise _truncated(path, f"({group:04X},{elem:04X}): {end - start} of {length} bytes")
    return stop, tag, vr, (start, stop, length)


def read_fast(buf: bytes, path: str) -> Dataset | None:
    """Parse a DICOM file's bytes for the elements :data:`WANTED`, or ``None`` to fall back.

    Parameters
    ----------
    buf
        The whole file.
    path
        For messages.

    Returns
    -------
    pydicom.dataset.Dataset or None
        With ``file_meta`` and the wanted elements as raw elements (converted on access).

    Raises
    ------
    DicomError
        ``TRUNCATED`` when an element runs past the end of the file.
    """
    if len(buf) < 144 or buf[128:132] != b"DICM":
        return None
    try:
        pos = 132
        meta_raw: dict[Tag, DataElement | RawDataElement] = {}
        while pos + 8 <= len(buf) and _hh.unpack_from(buf, pos)[0] == 0x0002:
            nxt, tag, vr, (a, b, n) = _next_element(buf, pos, False, path)
            meta_raw[Tag(tag)] = RawDataElement(Tag(tag), vr.decode() if vr else None,
                                                n, buf[a:b], a, False, True)
            pos = nxt
        meta = FileMetaDataset(meta_raw)
        ts = str(meta.get("TransferSyntaxUID", "") or "").rstrip("\x00 ")
        if ts in ("", BIG_ENDIAN):
            return None
        if ts == DEFLATED:
            # the dataset after the file meta is one raw deflate stream of explicit VR LE
            buf, pos = zlib.decompress(buf[pos:], -zlib.MAX_WBITS), 0
        implicit = ts == IMPLICIT_LE
        raw: dict[Tag, DataElement | RawDataElement] = {}
        end = len(buf)
        while pos < end:
            if end - pos < 8:
                if buf[pos:].strip(b"\x00") == b"":
                    break  # trailing padding
                raise _truncated(path, "an element header")
            nxt, tag, vr, (a, b, n) = _next_element(buf, pos, implicit, path)
            if tag in FALLBACK:
                return None
            if tag in WANTED:
                vr_s = vr.decode() if vr else WANTED[tag]
                raw[Tag(tag)] = RawDataElement(Tag(tag), vr_s, n, buf[a:b], a, implicit, True)
            pos = nxt
    except DicomError:
        raise
    except (struct.error, ValueError, UnicodeDecodeError, zlib.error):
        return None  # something unusual: let pydicom read it and judge
    ds = Dataset(raw)
    ds.file_meta = meta
    ds.set_original_encoding(implicit, True, ds._character_set)
    return ds


_KEYWORD_TAGS: dict[str, int] = {}
_NUMERIC_TEXT = frozenset({"DS", "IS", "CS", "UI", "AS"})


def quick_get(ds: Dataset, keyword: str, default: Any = None) -> Any:
    """``ds.get(keyword)`` without pydicom's element conversion for plain values.

    Raw (not yet converted) little-endian elements of VR US/UL/SS/SL/DS/IS/CS/UI/AS are
    decoded here directly: strings for DS/IS (``float()``/``int()`` them), a list when
    multi-valued; ``default`` when absent or empty. Pixel Data comes back as its bytes.
    Anything else goes through ``ds.get``.
    """
    tag = _KEYWORD_TAGS.get(keyword)
    if tag is None:
        from pydicom.datadict import tag_for_keyword

        found = tag_for_keyword(keyword)
        if found is None:
            return ds.get(keyword, default)
        tag = _KEYWORD_TAGS[keyword] = int(found)
    try:
        elem = ds.get_item(tag)
    except KeyError:
        return default
    if elem is None:
        return default
    if not isinstance(elem, RawDataElement) or not elem.is_little_endian:
        value = ds.get(keyword, default)
        return default if value is None or value == "" else value
    vr, raw = elem.VR, elem.value
    if raw is None or len(raw) == 0:
        return default
    if tag == 0x7FE00010:
        return raw
    if vr in _NUMERIC_TEXT:
        parts = raw.decode("latin-1").strip("\x00 ").split("\\")
        parts = [p.strip("\x00 ") for p in parts]
        if parts == [""]:
            return default
        return parts if len(parts) > 1 else parts[0]
    fmt = {"US": "<H", "SS": "<h", "UL": "<I", "SL": "<i"}.get(vr or "")
    if fmt is not None:
        values = [v[0] for v in struct.iter_unpack(fmt, raw)]
        return values if len(values) > 1 else values[0]
    value = ds.get(keyword, default)
    return default if value is None or value == "" else value
