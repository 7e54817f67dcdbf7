"""Screening models behind one interface: the reference screener, plug-in files, vendor results.

``load_model(spec)`` turns the manifest's ``model:`` entry (or a bare string) into an object
that follows :class:`fracture_qi.screening.types.ScreeningModel`:

* ``reference``: the built-in torch screener (:mod:`fracture_qi.screening.reference`);
* ``torchscript`` / ``onnx``: a site's own validated model file with a **model card** beside it
  (see ``docs/model-cards.md``), its sha256 checked against the manifest before it is loaded;
* ``vendor``: a CSV of another AI's results (``study_instance_uid, flag, score, levels``) loaded
  as a "model" so that the rest of the suite audits that AI exactly like the reference one.

Every model carries ``model_id`` and ``model_version`` (stored with every result) and a
picklable :class:`ModelSpec` (``model.spec``) from which a Dask worker rebuilds it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from fracture_qi.dicom.geometry import CTVolume
from fracture_qi.dicom.reasons import ReasonCode
from fracture_qi.errors import ModelError
from fracture_qi.integrity import sha256_file as file_sha256
from fracture_qi.screening.types import LEVELS, GenantGrade, SeriesResult, VertebraResult

log = logging.getLogger(__name__)

MODEL_KINDS = ("reference", "torchscript", "onnx", "vendor")
_SUFFIX_KIND = {".pt": "torchscript", ".pth": "torchscript", ".ts": "torchscript",
                ".onnx": "onnx", ".csv": "vendor", ".dcm": "vendor"}


# --------------------------------------------------------------------------------------------
# spec
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to (re)build a model, in a picklable form.

    Attributes
    ----------
    kind
        ``reference``, ``torchscript``, ``onnx`` or ``vendor``.
    path
        Absolute path of the model file or vendor CSV (``None`` for ``reference``).
    sha256
        The checksum the manifest declares for *path* (required for file models).
    card
        Absolute path of the model card (``None``: looked up beside the file).
    model_id, model_version
        Identity for vendor results (required there); for card models they must agree
        with the card when given.
    device
        ``auto``, ``cpu``, ``cuda``, ``cuda:1`` or ``mps``.
    flag_grade
        A study is flagged when any vertebra reaches this Genant grade (1-3).
    low_density_hu
        L1 trabecular HU under which bone density is flagged low (reference model).
    """

    kind: str = "reference"
    path: str | None = None
    sha256: str | None = None
    card: str | None = None
    model_id: str | None = None
    model_version: str | None = None
    device: str = "auto"
    flag_grade: int = 2
    low_density_hu: float = 110.0
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for ScreeningRun.params and logs)."""
        return asdict(self)


def _get(obj: Any, *names: str) -> Any:
    for name in names:
        if isinstance(obj, Mapping):
            if name in obj and obj[name] is not None:
                return obj[name]
        else:
            value = getattr(obj, name, None)
            if value is not None:
                return value
    return None


def resolve_spec(
    model: Any = None,
    *,
    base: Path | str | None = None,
    device: str | None = None,
    flag_grade: int | None = None,
    low_density_hu: float | None = None,
) -> ModelSpec:
    """Normalise a manifest ``model:`` entry, a path or a kind name into a :class:`ModelSpec`.

    Parameters
    ----------
    model
        ``None`` or ``"reference"``; a path to a ``.pt``/``.onnx``/``.csv`` file; a mapping or
        an object (the manifest's pydantic model) with ``kind``, ``path``, ``sha256``, ``card``,
        ``id``/``model_id``, ``version``/``model_version``; or a :class:`ModelSpec`.
    base
        Folder that relative paths are relative to (the manifest's folder).
    device, flag_grade, low_density_hu
        Overrides (command-line options win over the manifest).

    Returns
    -------
    ModelSpec

    Raises
    ------
    ModelError
        For an unknown kind or a file model without a path.

    Examples
    --------
    >>> resolve_spec("reference", flag_grade=1).flag_grade
    1
    >>> resolve_spec({"kind": "onnx", "path": "m.onnx", "sha256": "ab"}, base="/site").path
    '/site/m.onnx'
    """
    base_path = Path(base) if base is not None else Path.cwd()
    if isinstance(model, ModelSpec):
        spec = model
    else:
        if model is None:
            raw: Any = {"kind": "reference"}
        elif isinstance(model, (str, Path)):
            text = str(model)
            if text in MODEL_KINDS:
                raw = {"kind": text}
            else:
                kind = _SUFFIX_KIND.get(Path(text).suffix.lower())
                if kind is None:
                    raise ModelError(
                        f"model {text!r}: cannot tell the model kind from the name. Fix: use "
                        f"one of {', '.join(MODEL_KINDS)} or a .pt/.onnx/.csv file"
                    )
                raw = {"kind": kind, "path": text}
        else:
            raw = model
        kind = str(_get(raw, "kind") or "reference").lower()
        if kind not in MODEL_KINDS:
            raise ModelError(
                f"model.kind = {kind!r} is not a known model kind. "
                f"Fix: use one of {', '.join(MODEL_KINDS)}"
            )
        path = _get(raw, "path")
        card = _get(raw, "card")
        if kind != "reference" and not path:
            raise ModelError(
                f"model.kind = {kind!r} needs model.path (the model file). "
                "Fix: add path: and sha256: to the manifest's model entry"
            )
        screening_opts = _get(raw, "options") or {}
        spec = ModelSpec(
            kind=kind,
            path=str((base_path / Path(path)).resolve()) if path else None,
            sha256=(str(_get(raw, "sha256")).lower() if _get(raw, "sha256") else None),
            card=str((base_path / Path(card)).resolve()) if card else None,
            model_id=_get(raw, "model_id", "id", "name"),
            model_version=(
                str(_get(raw, "model_version", "version"))
                if _get(raw, "model_version", "version") is not None
                else None
            ),
            options=dict(screening_opts) if isinstance(screening_opts, Mapping) else {},
        )
    changes: dict[str, Any] = {}
    if device is not None:
        changes["device"] = device
    if flag_grade is not None:
        if int(flag_grade) not in (1, 2, 3):
            raise ModelError(
                f"flag_grade = {flag_grade!r}: must be a Genant grade 1, 2 or 3. "
                "Fix: use --flag-grade 2 (the usual commercial threshold) or 1"
            )
        changes["flag_grade"] = int(flag_grade)
    if low_density_hu is not None:
        changes["low_density_hu"] = float(low_density_hu)
    if changes:
        spec = ModelSpec(**{**spec.to_dict(), **changes})
    return spec


def verify_sha256(path: Path | str, expected: str | None, *, what: str = "model.path") -> str:
    """Check a model file against its declared sha256; return the actual hash.

    Raises
    ------
    ModelError
        When the file is missing, when no checksum is declared, or when it differs.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelError(
            f"{what} = {str(p)!r}: file not found. Fix: correct the path in the manifest "
            "(relative paths are relative to the manifest's folder)"
        )
    actual = file_sha256(p)
    if not expected:
        raise ModelError(
            f"{what} = {str(p)!r} has no sha256 in the manifest; a plug-in model is only run "
            f"when its checksum is declared. Fix: add  sha256: {actual}  to the manifest's "
            "model entry after checking this is the validated file"
        )
    if actual != expected.lower():
        raise ModelError(
            f"{what} = {str(p)!r}: sha256 is {actual} but the manifest declares {expected}; "
            "the file is not the one that was validated. Fix: restore the validated file, or, "
            "if this new file has been validated, update model.sha256 in the manifest"
        )
    return actual


def _pick_device(device: str) -> str:
    import torch  # torch only inside screening/, and only when needed

    try:  # the reference screener's helper, where it exists, is the single source of truth
        from fracture_qi.screening.device import pick_device

        return str(pick_device(device))
    except ImportError:
        pass
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


# --------------------------------------------------------------------------------------------
# model cards
# --------------------------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CardInput(_Strict):
    """What the model is fed. See docs/model-cards.md."""

    kind: Literal["volume", "sagittal_slab"] = "volume"
    shape: list[int] = Field(min_length=2, max_length=3)
    hu_window: tuple[float, float] = (-1000.0, 2000.0)
    slab_mm: float = 10.0
    dtype: Literal["float32", "float16"] = "float32"
    batch: bool = True
    name: str | None = None


class CardOutput(_Strict):
    """What the model returns. See docs/model-cards.md."""

    kind: Literal["level_grades", "level_probabilities", "study_score"]
    levels: list[str] | None = None
    threshold: float = 0.5
    softmax: bool = False
    name: str | None = None


class ModelCard(_Strict):
    """The model card that must sit beside a TorchScript or ONNX model file."""

    name: str = Field(min_length=1, max_length=100)
    version: str = Field(min_length=1, max_length=50)
    format: Literal["torchscript", "onnx"] | None = None
    sha256: str | None = None
    description: str | None = None
    intended_use: str | None = None
    validation: str | dict[str, Any] | None = None
    authors: str | list[str] | None = None
    license: str | None = None
    input: CardInput
    output: CardOutput


def card_path_for(model_path: Path, explicit: str | Path | None = None) -> Path:
    """Where the card of *model_path* is: the explicit one, else ``<file>.card.{yaml,json}``.

    Raises
    ------
    ModelError
        When no card is found.
    """
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise ModelError(
                f"model.card = {str(p)!r}: file not found. Fix: correct model.card in the "
                "manifest or put the card beside the model file"
            )
        return p
    candidates = [
        model_path.with_name(model_path.name + ".card.yaml"),
        model_path.with_name(model_path.name + ".card.json"),
        model_path.with_suffix(".card.yaml"),
        model_path.with_suffix(".card.json"),
    ]
    for c in candidates:
        if c.is_file():
            return c
    raise ModelError(
        f"model.path = {str(model_path)!r} has no model card. Fix: write "
        f"{candidates[0].name} beside it (name, version, input, output: see "
        "docs/model-cards.md) or set model.card in the manifest"
    )


def read_card(path: Path | str) -> ModelCard:
    """Read and validate a model card (YAML or JSON).

    Raises
    ------
    ModelError
        Naming the card file, the field and the fix for every problem.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except (OSError, ValueError) as e:  # yaml.YAMLError derives from Exception, see below
        raise ModelError(f"model card {str(p)!r} cannot be read: {e}. Fix: valid YAML/JSON") from e
    except Exception as e:  # yaml.YAMLError
        raise ModelError(f"model card {str(p)!r} is not valid YAML: {e}. Fix: correct it") from e
    if not isinstance(data, Mapping):
        raise ModelError(f"model card {str(p)!r}: expected a mapping at top level. "
                         "Fix: see docs/model-cards.md for the format")
    try:
        card = ModelCard.model_validate(data)
    except PydanticValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()
        )
        raise ModelError(
            f"model card {str(p)!r}: {problems}. Fix: see docs/model-cards.md for the fields"
        ) from e
    if card.output.kind != "study_score":
        levels = card.output.levels
        if not levels:
            raise ModelError(f"model card {str(p)!r}: output.levels is required for "
                             f"output.kind {card.output.kind}. Fix: list the levels in order, "
                             "e.g. [T4, T5, ..., L5]")
        bad = [lv for lv in levels if lv not in LEVELS]
        if bad:
            raise ModelError(f"model card {str(p)!r}: output.levels has unknown level(s) {bad}. "
                             f"Fix: use names from {LEVELS[0]}..{LEVELS[-1]}")
    if card.input.kind == "volume" and len(card.input.shape) != 3:
        raise ModelError(f"model card {str(p)!r}: input.shape must be [z, y, x] for kind volume")
    if card.input.kind == "sagittal_slab" and len(card.input.shape) != 2:
        raise ModelError(f"model card {str(p)!r}: input.shape must be [z, y] for sagittal_slab")
    return card


# --------------------------------------------------------------------------------------------
# results from model outputs (shared by TorchScript and ONNX)
# --------------------------------------------------------------------------------------------
def _grade_band(grade: int) -> str:
    return "normal" if grade <= 0 else ""


def results_from_output(
    output: np.ndarray, card: ModelCard, flag_grade: int
) -> list[SeriesResult]:
    """Turn a batch of raw model outputs into :class:`SeriesResult` objects.

    Parameters
    ----------
    output
        ``(B, L)`` grades, ``(B, L, 4)`` grade probabilities or ``(B,)``/``(B, 1)`` scores.
    card
        The model card describing the output.
    flag_grade
        Study flag threshold for level outputs.

    Raises
    ------
    ModelError
        When the output shape disagrees with the card.
    """
    out = np.asarray(output, dtype=np.float64)
    kind = card.output.kind
    results: list[SeriesResult] = []
    if kind == "study_score":
        if out.ndim == 2 and out.shape[1] == 1:
            out = out[:, 0]
        if out.ndim != 1:
            raise ModelError(f"model {card.name} {card.version}: output shape {output.shape} "
                             "does not match output.kind study_score (expected (B,) or (B, 1))")
        for s in out:
            score = float(s)
            results.append(SeriesResult(
                status="ok", flagged=bool(score >= card.output.threshold), score=score,
                max_grade=0,
            ))
        return results
    levels = card.output.levels or []
    n = len(levels)
    if kind == "level_grades" and (out.ndim != 2 or out.shape[1] != n):
        raise ModelError(f"model {card.name} {card.version}: output shape {output.shape} does "
                         f"not match output.kind level_grades with {n} levels (expected (B, {n}))")
    if kind == "level_probabilities" and (out.ndim != 3 or out.shape[1:] != (n, 4)):
        raise ModelError(f"model {card.name} {card.version}: output shape {output.shape} does "
                         f"not match level_probabilities with {n} levels (expected (B, {n}, 4))")
    for b in range(out.shape[0]):
        vertebrae: list[VertebraResult] = []
        for i, level in enumerate(levels):
            if kind == "level_grades":
                value = out[b, i]
                if not math.isfinite(value) or value < 0:
                    continue  # the model says this level was not assessed (out of view)
                grade = int(min(3, max(0, round(value))))
                score = float(min(1.0, value / 3.0))
            else:
                p = out[b, i]
                if not np.all(np.isfinite(p)):
                    continue
                if card.output.softmax:
                    e = np.exp(p - p.max())
                    p = e / e.sum()
                grade = int(np.argmax(p))
                score = float(1.0 - p[0])
            vertebrae.append(VertebraResult(
                level=level, genant_grade=grade, morph_type=_grade_band(grade),
                ha_mm=None, hm_mm=None, hp_mm=None, score=score,
            ))
        max_grade = max((v.genant_grade for v in vertebrae), default=0)
        score = max((v.score or 0.0 for v in vertebrae), default=0.0)
        if not vertebrae:
            results.append(SeriesResult(
                status="error", reason=str(ReasonCode.NO_VERTEBRAE),
                detail=f"model {card.name} {card.version} assessed no level",
            ))
            continue
        results.append(SeriesResult(
            status="ok", flagged=max_grade >= flag_grade, score=score,
            max_grade=max_grade, vertebrae=vertebrae,
        ))
    return results


# --------------------------------------------------------------------------------------------
# preprocessing (torch: fast resampling on the chosen device)
# --------------------------------------------------------------------------------------------
def prepare_input(volume: CTVolume, spec: CardInput, device: str = "cpu") -> Any:
    """Build the model input for one volume as a torch tensor ``(1, *shape)`` (channel first).

    ``volume``: the whole HU volume, clipped to ``hu_window``, scaled to [0, 1] and resampled
    to ``shape`` ([z, y, x]) by area averaging (anti-aliased). ``sagittal_slab``: the mean of
    a ``slab_mm`` thick sagittal slab centred on the bone midline, scaled likewise and
    resampled to ``shape`` ([z, y]).
    """
    import torch
    import torch.nn.functional as F

    lo, hi = spec.hu_window
    hu = torch.from_numpy(np.ascontiguousarray(volume.hu)).to(device)
    if spec.kind == "sagittal_slab":
        # bone (> 250 HU) x-profile: its weighted median is the body midline (spine, sternum)
        bone = (hu > 250).sum(dim=(0, 1)).to(torch.float64)
        if float(bone.sum()) > 0:
            cdf = torch.cumsum(bone, 0) / bone.sum()
            xc = int(torch.searchsorted(cdf, torch.tensor(0.5, dtype=cdf.dtype, device=device)))
        else:
            xc = hu.shape[2] // 2
        half = max(0, round(spec.slab_mm / volume.spacing[2] / 2))
        x0, x1 = max(0, xc - half), min(hu.shape[2], xc + half + 1)
        img = hu[:, :, x0:x1].to(torch.float32).clamp_(lo, hi).mean(dim=2)
        img = (img - lo) / (hi - lo)
        x = F.interpolate(img[None, None], size=tuple(spec.shape), mode="area")[0]
    else:
        vol = hu.to(torch.float32).clamp_(lo, hi)
        vol = (vol - lo) / (hi - lo)
        x = F.interpolate(vol[None, None], size=tuple(spec.shape), mode="area")[0]
    return x.to(torch.float16 if spec.dtype == "float16" else torch.float32)


class _CardModel:
    """Shared logic of TorchScript and ONNX plug-in models."""

    needs_pixels = True

    def __init__(self, spec: ModelSpec, kind: str) -> None:
        assert spec.path is not None
        path = Path(spec.path)
        self.sha256 = verify_sha256(path, spec.sha256)
        self.card_path = card_path_for(path, spec.card)
        self.card = read_card(self.card_path)
        if self.card.format and self.card.format != kind:
            raise ModelError(f"model card {str(self.card_path)!r}: format {self.card.format} but "
                             f"the manifest says kind {kind}. Fix: make them agree")
        if self.card.sha256 and self.card.sha256.lower() != self.sha256:
            raise ModelError(f"model card {str(self.card_path)!r}: sha256 {self.card.sha256} "
                             f"differs from the file's {self.sha256}. Fix: the card belongs to "
                             "another build of the model; use the matching card")
        if spec.model_id and spec.model_id != self.card.name:
            raise ModelError(f"model.id = {spec.model_id!r} but the card names the model "
                             f"{self.card.name!r}. Fix: remove model.id or make them agree")
        if spec.model_version and spec.model_version != self.card.version:
            raise ModelError(f"model.version = {spec.model_version!r} but the card says "
                             f"{self.card.version!r}. Fix: remove model.version or make them agree")
        self.spec = spec
        self.model_id = self.card.name
        self.model_version = self.card.version
        self.flag_grade = spec.flag_grade
        self.device = _pick_device(spec.device)
        self.path = path

    def _run(self, batch: Any) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    def screen(self, volume: CTVolume) -> SeriesResult:
        """Screen one volume."""
        return self.screen_many([volume])[0]

    def screen_many(self, volumes: Sequence[CTVolume]) -> list[SeriesResult]:
        """Screen several volumes in one forward pass where the card allows batches."""
        import torch

        inputs = [prepare_input(v, self.card.input, self.device) for v in volumes]
        if self.card.input.batch:
            outputs = self._run(torch.stack(inputs))
        else:
            outputs = np.concatenate([self._run(x[None]) for x in inputs], axis=0)
        return results_from_output(outputs, self.card, self.flag_grade)


class TorchScriptModel(_CardModel):
    """A site's TorchScript model (``torch.jit.save``) with its model card."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec, "torchscript")
        import torch

        try:
            with warnings.catch_warnings():  # TorchScript is deprecated upstream, still a
                warnings.simplefilter("ignore", DeprecationWarning)  # supported site format
                self._module = torch.jit.load(str(self.path), map_location=self.device).eval()
        except Exception as e:  # torch raises RuntimeError with a long C++ trace
            raise ModelError(f"model.path = {str(self.path)!r} is not a loadable TorchScript "
                             f"file ({type(e).__name__}). Fix: export it with torch.jit.save "
                             "(or use kind: onnx for an ONNX file)") from e

    def _run(self, batch: Any) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self._module(batch)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if isinstance(out, dict):
            out = out[self.card.output.name] if self.card.output.name else next(iter(out.values()))
        return out.float().cpu().numpy()


class OnnxModel(_CardModel):
    """A site's ONNX model run with onnxruntime, with its model card."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec, "onnx")
        from fracture_qi._optional import import_optional

        ort = import_optional("onnxruntime", "running an ONNX screening model")
        providers = ["CPUExecutionProvider"]
        if self.device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self._session = ort.InferenceSession(str(self.path), providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModelError(f"model.path = {str(self.path)!r} is not a loadable ONNX model "
                             f"({type(e).__name__}: {e}). Fix: re-export it with torch.onnx.export "
                             "or check the opset") from e
        inputs = self._session.get_inputs()
        self._input_name = self.card.input.name or inputs[0].name
        self._output_name = self.card.output.name or self._session.get_outputs()[0].name

    def _run(self, batch: Any) -> np.ndarray:
        arr = batch.detach().cpu().numpy()
        (out,) = self._session.run([self._output_name], {self._input_name: arr})
        return np.asarray(out)


# --------------------------------------------------------------------------------------------
# vendor results
# --------------------------------------------------------------------------------------------
_LEVEL_ITEM = re.compile(r"^\s*([TL]\d{1,2})\s*:\s*([0-3])\s*(?::\s*([a-z]+)\s*)?$", re.IGNORECASE)
_TYPES = {"normal", "wedge", "biconcave", "crush"}
VENDOR_COLUMNS = ("study_instance_uid", "flag", "score", "levels")


def parse_levels(text: str, *, where: str = "levels") -> list[VertebraResult]:
    """Parse a vendor ``levels`` cell such as ``"T12:2;L1:3:wedge"``.

    Items are ``LEVEL:GRADE`` or ``LEVEL:GRADE:TYPE`` separated by ``;``. A type the vendor
    does not give is left empty (unknown), never guessed.

    Raises
    ------
    ModelError
        Naming *where* (file and row) and the bad item.

    Examples
    --------
    >>> [(v.level, v.genant_grade, v.morph_type) for v in parse_levels("T12:2; L1:0")]
    [('T12', 2, ''), ('L1', 0, 'normal')]
    """
    out: list[VertebraResult] = []
    for item in filter(None, (s.strip() for s in (text or "").split(";"))):
        m = _LEVEL_ITEM.match(item)
        level = m.group(1).upper() if m else None
        if not m or level not in LEVELS:
            raise ModelError(f"{where}: item {item!r} is not LEVEL:GRADE (e.g. T12:2 or "
                             "L1:3:wedge) with a level T1..L5 and a grade 0-3. Fix: correct it")
        grade = int(m.group(2))
        mtype = (m.group(3) or "").lower()
        if mtype and mtype not in _TYPES:
            raise ModelError(f"{where}: item {item!r} has type {mtype!r}. "
                             f"Fix: use one of {sorted(_TYPES)}")
        if not mtype and grade == 0:
            mtype = "normal"
        out.append(VertebraResult(level=level, genant_grade=grade, morph_type=mtype,
                                  ha_mm=None, hm_mm=None, hp_mm=None,
                                  score=None))
    return out


def _parse_flag(value: str, where: str) -> bool:
    v = (value or "").strip().lower()
    if v in {"1", "true", "yes", "y", "positive", "pos"}:
        return True
    if v in {"0", "false", "no", "n", "negative", "neg"}:
        return False
    raise ModelError(f"{where}: flag {value!r} is not 0/1. Fix: write 1 for flagged, 0 for not")


def folder_sha256(folder: Path | str) -> str:
    """A digest of a folder's files (relative name and content), for provenance.

    Vendor results delivered as DICOM keep arriving, so no checksum is declared for a folder;
    this digest, stored with the screening run, says exactly which files a run read.
    """
    root = Path(folder)
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file() and not q.name.startswith(".")):
        h.update(str(p.relative_to(root)).encode("utf-8") + b"\0")
        h.update(file_sha256(p).encode("ascii"))
    return h.hexdigest()


class VendorResults:
    """Another AI's per-study results, loaded as a model so they are audited the same way.

    Two forms of ``path``:

    * a CSV with columns ``study_instance_uid, flag, score, levels`` (levels like
      ``"T12:2;L1:3"``), its sha256 declared in the manifest;
    * the vendor's **DICOM output**: a folder (or one ``.dcm`` file) of TID 1500 SRs, simple
      vendor SRs with a study-level finding, or flagged Secondary Captures, read by
      :mod:`fracture_qi.results_dicom.read` (a folder's digest is recorded instead of a
      declared checksum, since results keep arriving).

    Results are looked up by study; no pixels are decoded (``needs_pixels`` is False), so
    screening a cohort this way takes seconds.
    """

    needs_pixels = False

    def __init__(self, spec: ModelSpec) -> None:
        assert spec.path is not None
        if not spec.model_id or not spec.model_version:
            raise ModelError(
                "model.kind = 'vendor' needs model.id and model.version (the vendor product "
                "and its version, stored with every result). Fix: add e.g. id: acme-spine, "
                "version: '3.2' to the manifest's model entry"
            )
        self.spec = spec
        self.path = Path(spec.path)
        self.dicom = self.path.is_dir() or self.path.suffix.lower() != ".csv"
        if self.path.is_dir():
            self.sha256 = folder_sha256(self.path)
        else:
            self.sha256 = verify_sha256(self.path, spec.sha256)
        self.model_id = str(spec.model_id)
        self.model_version = str(spec.model_version)
        self.flag_grade = spec.flag_grade
        self._rows: dict[str, SeriesResult] = {}
        if self.dicom:
            self._read_dicom()
        else:
            self._read()

    def _read_dicom(self) -> None:
        from fracture_qi.results_dicom.read import read_results

        found = read_results([self.path], flag_grade=self.flag_grade)
        for uid, r in found.by_study.items():
            self._rows[uid] = r.result
        log.info("vendor DICOM results %s: %d studies from %d files (%d not results)",
                 self.path.name, len(self._rows), found.n_files, found.ignored)

    def _read(self) -> None:
        with open(self.path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            cols = [c.strip().lower() for c in (reader.fieldnames or [])]
            missing = [c for c in VENDOR_COLUMNS if c not in cols]
            if missing:
                raise ModelError(f"vendor results {str(self.path)!r}: missing column(s) "
                                 f"{missing}; found {cols}. Fix: the CSV needs the header "
                                 f"{','.join(VENDOR_COLUMNS)}")
            for rowno, raw in enumerate(reader, start=2):
                row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k}
                where = f"vendor results {self.path.name} row {rowno}"
                uid = row["study_instance_uid"]
                if not uid:
                    raise ModelError(f"{where}: study_instance_uid is empty. Fix: fill it in")
                if uid in self._rows:
                    raise ModelError(f"{where}: study {uid} appears twice. Fix: keep one row "
                                     "per study")
                try:
                    score = float(row["score"]) if row["score"] else None
                except ValueError as e:
                    raise ModelError(f"{where}: score {row['score']!r} is not a number. "
                                     "Fix: write a number or leave it empty") from e
                vertebrae = parse_levels(row["levels"], where=where)
                self._rows[uid] = SeriesResult(
                    status="ok", flagged=_parse_flag(row["flag"], where), score=score,
                    max_grade=max((v.genant_grade for v in vertebrae), default=0),
                    vertebrae=vertebrae,
                )
        log.info("vendor results %s: %d studies", self.path.name, len(self._rows))

    def __len__(self) -> int:
        return len(self._rows)

    def result_for(self, study_instance_uid: str, series_instance_uid: str = "") -> SeriesResult:
        """The vendor's result for a study (an error result when the vendor has none)."""
        found = self._rows.get(study_instance_uid)
        if found is None:
            return SeriesResult(
                status="error", reason=str(ReasonCode.NO_MODEL_RESULT),
                detail=f"no {'DICOM result' if self.dicom else 'row'} for this study in "
                   f"{self.path.name}",
            )
        # a fresh copy: results are mutated downstream (seconds)
        return SeriesResult(
            status=found.status, flagged=found.flagged, score=found.score,
            max_grade=found.max_grade,
            vertebrae=[VertebraResult(**v.as_row()) for v in found.vertebrae],
            l1_hu=found.l1_hu, bone_density_level=found.bone_density_level,
            low_density=found.low_density, contrast_phase=found.contrast_phase,
        )

    def screen(self, volume: CTVolume) -> SeriesResult:
        """Look the volume's study up (pixels unused)."""
        return self.result_for(volume.study_instance_uid, volume.series_instance_uid)


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------
def _reference(spec: ModelSpec) -> Any:
    try:
        from fracture_qi.screening.reference import ReferenceScreener
    except ImportError as e:
        raise ModelError(
            "the reference screener (fracture_qi.screening.reference) cannot be imported: "
            f"{e}. Fix: install the screening extra (pip install -e '.[screening]')"
        ) from e
    model = ReferenceScreener(device=spec.device, flag_grade=spec.flag_grade,
                              low_density_hu=spec.low_density_hu, **spec.options)
    try:
        setattr(model, "spec", spec)  # noqa: B010  (so a Dask worker can rebuild it)
    except AttributeError:  # a class with __slots__: the engine falls back to the spec it has
        pass
    return model


def load_model(
    model: Any = None,
    *,
    base: Path | str | None = None,
    device: str | None = None,
    flag_grade: int | None = None,
    low_density_hu: float | None = None,
    max_slice_mm: float | None = None,
) -> Any:
    """Build the screening model a manifest (or a command line) asks for.

    Parameters
    ----------
    model
        The manifest's ``model:`` entry, a :class:`ModelSpec`, a kind name or a file path
        (see :func:`resolve_spec`).
    base
        The manifest's folder, for relative paths.
    device, flag_grade, low_density_hu
        Overrides of the manifest's screening settings.
    max_slice_mm
        The reference screener's coarsest graded z spacing (``SLICE_TOO_THICK`` beyond it);
        kept in the spec's options so that a Dask worker rebuilds the same screener. Other
        kinds ignore it (the index already excludes thicker series).

    Returns
    -------
    ScreeningModel
        With ``model_id``, ``model_version``, ``sha256``, ``spec`` and ``screen(volume)``
        (plus ``screen_many`` where the model batches).

    Raises
    ------
    ModelError
        Unknown kind, missing file or card, checksum mismatch, invalid card or CSV.
    """
    spec = resolve_spec(model, base=base, device=device, flag_grade=flag_grade,
                        low_density_hu=low_density_hu)
    if spec.kind == "reference" and max_slice_mm is not None:
        spec = replace(spec, options={**spec.options, "max_slice_mm": float(max_slice_mm)})
    if spec.kind == "reference":
        built = _reference(spec)
    elif spec.kind == "torchscript":
        built = TorchScriptModel(spec)
    elif spec.kind == "onnx":
        built = OnnxModel(spec)
    else:
        built = VendorResults(spec)
    log.info("model %s %s (%s) loaded", built.model_id, built.model_version, spec.kind)
    return built


def spec_of(model: Any) -> ModelSpec | None:
    """The :class:`ModelSpec` a model was built from, where it has one."""
    spec = getattr(model, "spec", None)
    return spec if isinstance(spec, ModelSpec) else None


__all__ = [
    "CardInput",
    "CardOutput",
    "GenantGrade",
    "ModelCard",
    "ModelSpec",
    "OnnxModel",
    "TorchScriptModel",
    "VendorResults",
    "card_path_for",
    "file_sha256",
    "folder_sha256",
    "load_model",
    "parse_levels",
    "prepare_input",
    "read_card",
    "resolve_spec",
    "results_from_output",
    "spec_of",
    "verify_sha256",
]
