"""Synthetic patients: names, NHS numbers (999 test range, valid mod-11), MRNs, sites, scanners.

Nothing here is a real person or a real hospital. NHS numbers start with 999, the range
reserved for testing, and carry a valid modulus-11 check digit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fracture_qi.pseudonym import nhs_number_is_valid

GIVEN_F = (
    "Margaret",
    "Joan",
    "Patricia",
    "Dorothy",
    "Irene",
    "Brenda",
    "Sheila",
    "Maureen",
    "Eileen",
    "Valerie",
    "Pauline",
    "Janet",
    "Christine",
    "Susan",
    "Linda",
    "Ann",
    "Helen",
    "Anita",
    "Priya",
    "Nasreen",
    "Grace",
    "Olga",
    "Bernadette",
    "Fiona",
)
GIVEN_M = (
    "John",
    "David",
    "Peter",
    "Michael",
    "Brian",
    "Alan",
    "Kenneth",
    "Derek",
    "Roy",
    "Keith",
    "Colin",
    "Barry",
    "Trevor",
    "Graham",
    "Raymond",
    "Stephen",
    "Anil",
    "Tariq",
    "Samuel",
    "Desmond",
    "Patrick",
    "Ivan",
    "Gareth",
    "Hugh",
)
SURNAMES = (
    "SMITH",
    "JONES",
    "TAYLOR",
    "BROWN",
    "WILLIAMS",
    "WILSON",
    "JOHNSON",
    "DAVIES",
    "ROBINSON",
    "WRIGHT",
    "THOMPSON",
    "EVANS",
    "WALKER",
    "WHITE",
    "ROBERTS",
    "GREEN",
    "HALL",
    "WOOD",
    "JACKSON",
    "CLARKE",
    "PATEL",
    "KHAN",
    "LEWIS",
    "HUGHES",
    "EDWARDS",
    "OKAFOR",
    "NOWAK",
    "MURPHY",
    "CAMPBELL",
    "ALI",
    "SINGH",
    "FOSTER",
    "MARSH",
    "PEARCE",
    "FLETCHER",
)


@dataclass(frozen=True)
class Scanner:
    """A CT scanner at a site, with its soft-tissue and bone kernels."""

    site: str
    site_code: str
    manufacturer: str
    model: str
    station: str
    soft_kernel: str
    bone_kernel: str
    signed: bool  # PixelRepresentation 1 (int16) or 0 (uint16)


SCANNERS: tuple[Scanner, ...] = (
    Scanner(
        "Northgate General Hospital",
        "NGH",
        "GE MEDICAL SYSTEMS",
        "Revolution CT",
        "NGHCT01",
        "STANDARD",
        "BONE",
        True,
    ),
    Scanner(
        "Northgate General Hospital",
        "NGH",
        "SIEMENS",
        "SOMATOM Force",
        "NGHCT02",
        "Br40",
        "Br64",
        False,
    ),
    Scanner(
        "Riverside University Hospital",
        "RUH",
        "SIEMENS",
        "SOMATOM Definition AS+",
        "RUHCT1",
        "B30f",
        "B70f",
        False,
    ),
    Scanner(
        "Riverside University Hospital",
        "RUH",
        "Canon Medical Systems",
        "Aquilion ONE",
        "RUHCT2",
        "FC08",
        "FC30",
        True,
    ),
    Scanner(
        "St Brigid's Community Hospital", "SBH", "Philips", "Incisive CT", "SBHCT", "B", "YC", False
    ),
)
#: share of studies per scanner (the community hospital is small)
SCANNER_WEIGHTS: tuple[float, ...] = (0.25, 0.15, 0.25, 0.2, 0.15)


def nhs_number(rng: np.random.Generator, used: set[str]) -> str:
    """A valid mod-11 NHS number in the 999 test range, not in *used* (which it updates).

    Examples
    --------
    >>> n = nhs_number(np.random.default_rng(1), set())
    >>> n.startswith("999") and nhs_number_is_valid(n)
    True
    """
    while True:
        body = "999" + "".join(str(int(d)) for d in rng.integers(0, 10, size=6))
        total = sum(int(d) * w for d, w in zip(body, range(10, 1, -1)))
        check = 11 - total % 11
        if check == 11:
            check = 0
        if check == 10:
            continue  # numbers with check 10 are never issued
        number = body + str(check)
        if number not in used and nhs_number_is_valid(number):
            used.add(number)
            return number


def person_name(rng: np.random.Generator, sex: str) -> str:
    """DICOM PN ``SURNAME^Given``."""
    given = GIVEN_F if sex == "F" else GIVEN_M
    return f"{SURNAMES[int(rng.integers(len(SURNAMES)))]}^{given[int(rng.integers(len(given)))]}"
