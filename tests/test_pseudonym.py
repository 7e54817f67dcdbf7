from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fracture_qi.errors import PseudonymisationKeyError
from fracture_qi.pseudonym import (
    DEMO_KEY,
    MIN_KEY_BYTES,
    nhs_number_is_valid,
    patient_key,
    read_key,
)


def test_read_key_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FQI_TEST_KEY", "x" * 32)
    assert read_key("env:FQI_TEST_KEY") == b"x" * 32


def test_read_key_env_missing_names_variable_and_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FQI_TEST_KEY", raising=False)
    with pytest.raises(PseudonymisationKeyError, match=r"FQI_TEST_KEY is not set.*Fix: export"):
        read_key("env:FQI_TEST_KEY")


def test_read_key_from_relative_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "site.key").write_text("  abcdefghijklmnopqrstuvwxyz  \n")
    assert read_key("file:site.key", base=tmp_path) == b"abcdefghijklmnopqrstuvwxyz"


def test_read_key_rejects_short_and_malformed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "k").write_text("short")
    with pytest.raises(PseudonymisationKeyError, match=f"at least {MIN_KEY_BYTES}"):
        read_key(f"file:{tmp_path / 'k'}")
    with pytest.raises(PseudonymisationKeyError, match="not understood"):
        read_key("plain-secret")
    with pytest.raises(PseudonymisationKeyError, match="cannot read key file"):
        read_key(f"file:{tmp_path / 'missing'}")


def test_demo_key_is_long_enough() -> None:
    assert len(DEMO_KEY.encode()) >= MIN_KEY_BYTES


@given(st.from_regex(r"[0-9]{10}", fullmatch=True))
def test_key_ignores_spacing_and_separates_namespaces(number: str) -> None:
    secret = b"k" * 32
    spaced = f"{number[:3]} {number[3:6]}-{number[6:]}"
    assert patient_key(secret, number) == patient_key(secret, spaced)
    assert patient_key(secret, number) != patient_key(secret, number, namespace="MRN:SITE")
    assert patient_key(secret, number) != patient_key(b"j" * 32, number)


def test_empty_identifier_refused() -> None:
    with pytest.raises(ValueError):
        patient_key(b"k" * 32, " - ")


@pytest.mark.parametrize(
    ("number", "ok"),
    [("9434765919", True), ("943 476 5919", True), ("9434765918", False), ("123", False),
     ("abcdefghij", False)],
)
def test_nhs_mod11(number: str, ok: bool) -> None:
    assert nhs_number_is_valid(number) is ok
