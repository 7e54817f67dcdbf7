"""The adjudication app (ipywidgets): worklist, viewer and decision form in one screen.

Runs inside JupyterLab or as a Voila app (``fracture-qi adjudicate``). The notebook is thin::

    AdjudicationApp.from_manifest(manifest, reviewer=reviewer, audit=audit).show()

Trust model: in Voila, the browser can set any widget value and fire any button through the
comm channel. So the app keeps the facts that matter on the server (which case is open, who
the reviewer is, which event a correction supersedes), reads the form's widgets only as
untrusted input, validates everything through :func:`~.decisions.record_decision`, and never
sends an exception's traceback to the page: callbacks are wrapped by :func:`_guarded`, which
logs the details on the server and shows a short message.
"""

from __future__ import annotations

import datetime as dt
import functools
import html
import logging
import re
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import ipywidgets as W
from sqlalchemy import Engine

from fracture_qi.adjudication.decisions import (
    APP_VERSION,
    Action,
    Decision,
    PreviouslyKnown,
    current_decision,
    record_decision,
)
from fracture_qi.adjudication.viewer import (
    MAX_SLAB_MM,
    WINDOWS,
    Finding,
    PreparedCase,
    ViewState,
    load_volume,
    name_findings,
    prepare_case,
    render_axial,
    render_sagittal,
)
from fracture_qi.adjudication.worklist import (
    DEFAULT_AUDIT,
    AdjudicationSettings,
    Case,
    CaseRecord,
    available_cases,
    claim_case,
    claim_next,
    load_case_record,
    release_claim,
    worklist_progress,
)
from fracture_qi.dicom.geometry import CTVolume
from fracture_qi.errors import ConflictError, FractureQIError, ValidationError
from fracture_qi.screening.types import LEVELS

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

DECISION_LABELS = [
    ("Fracture confirmed", Decision.CONFIRMED.value),
    ("Not confirmed", Decision.NOT_CONFIRMED.value),
    ("Indeterminate", Decision.INDETERMINATE.value),
    ("Not assessable", Decision.NOT_ASSESSABLE.value),
]
KNOWN_LABELS = [
    ("New (not known)", PreviouslyKnown.NONE.value),
    ("Reported by radiology", PreviouslyKnown.REPORTED.value),
    ("Known to FLS", PreviouslyKnown.KNOWN_FLS.value),
]
ACTION_LABELS = [
    ("- choose -", ""),
    ("Refer to FLS clinic", Action.REFER_FLS.value),
    ("Already on therapy", Action.ON_THERAPY.value),
    ("Not appropriate (give reason)", Action.NOT_APPROPRIATE.value),
    ("Deceased", Action.DECEASED.value),
]
GRADE_LABELS = [("1 mild (20-25%)", 1), ("2 moderate (25-40%)", 2), ("3 severe (>40%)", 3)]
BOLD = " style='font-weight:600'"
STRATUM_LABELS = {"flagged": "AI flagged", "audit_negative": "audit sample (AI negative)"}

CSS = """
<style>
.fqi-app {font-family: system-ui, sans-serif; font-size: 14px;}
.fqi-banner {background:#fff3cd; border:1px solid #e0c36c; padding:4px 8px; border-radius:4px;}
.fqi-status-ok {color:#11642a; font-weight:600;}
.fqi-status-error {color:#a40e26; font-weight:600;}
.fqi-status-info {color:#24466b;}
.fqi-panel {border:1px solid #d0d7de; border-radius:6px; padding:6px 10px; margin:4px;}
.fqi-patient td {padding:1px 8px 1px 0;}
.fqi-findings td, .fqi-findings th {padding:1px 6px; text-align:left;}
.fqi-section {font-weight:600; margin-top:6px;}
.fqi-app .mod-active {background:#1f5fbf !important; color:white !important;}
</style>
"""


def _esc(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def _guarded(method: F) -> F:
    """Run a widget callback; on any error log the traceback here and show a short message.

    Exceptions in ipywidgets callbacks would otherwise be printed by the kernel as a
    traceback to the browser. Suite errors (:class:`FractureQIError`) are written for users
    and shown as they are; anything else gets a reference the server log can be searched for.
    """

    @functools.wraps(method)
    def wrapper(self: AdjudicationApp, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except FractureQIError as e:
            logger.warning("%s: %s", method.__name__, e)
            self._status(str(e), "error")
        except Exception:  # the page must never see a traceback
            ref = uuid.uuid4().hex[:8]
            logger.exception("adjudication app error ref=%s in %s", ref, method.__name__)
            self._status(
                f"Something went wrong (reference {ref}); the details are in the server log. "
                "Decisions already saved are safe. Try again, or reload the page.", "error")
        return None

    return wrapper  # type: ignore[return-value]


class LevelRow:
    """One fractured vertebra in the form: level, grade and a remove button."""

    def __init__(self, on_remove: Callable[[LevelRow], None], level: str | None = None,
                 grade: int | None = None) -> None:
        self.level = W.Dropdown(options=[("level", "")] + [(lv, lv) for lv in LEVELS],
                                value=level or "", layout=W.Layout(width="90px"))
        self.level.add_class("fqi-level")
        self.grade = W.Dropdown(options=[("grade", 0)] + GRADE_LABELS, value=grade or 0,
                                layout=W.Layout(width="170px"))
        self.grade.add_class("fqi-grade")
        self.remove = W.Button(description="Remove", layout=W.Layout(width="80px"))
        self.remove.on_click(lambda _b: on_remove(self))
        self.box = W.HBox([self.level, self.grade, self.remove])

    def value(self) -> dict[str, Any]:
        return {"level": self.level.value, "grade": self.grade.value}


class AdjudicationApp:
    """The nurse's screen. Build it with :meth:`from_manifest` and call :meth:`show`.

    Parameters
    ----------
    engine
        The suite's database.
    reviewer
        The nurse's ID, fixed for the session (from ``--reviewer``), recorded on every event.
    audit
        Worklist name.
    settings
        Lease length (and sampling rates, used by ``fracture-qi worklist``).
    keyimage_root
        Folder that relative key-image paths are under.
    synthetic
        Show the "synthetic data" banner (demo cohorts).
    loader
        Turns instance paths into a :class:`CTVolume` (the DICOM loader by default).
    prefetch
        Prepare the next case in a background thread while the nurse reads this one.
    app_version
        Recorded on events.
    """

    def __init__(
        self,
        engine: Engine,
        reviewer: str,
        *,
        audit: str = DEFAULT_AUDIT,
        settings: AdjudicationSettings | None = None,
        keyimage_root: Path | None = None,
        synthetic: bool = False,
        loader: Callable[[Sequence[str]], CTVolume] = load_volume,
        prefetch: bool = True,
        app_version: str = APP_VERSION,
    ) -> None:
        self.engine = engine
        self.reviewer = (reviewer or "").strip()
        self.audit = audit or DEFAULT_AUDIT
        self.settings = settings or AdjudicationSettings()
        self.keyimage_root = keyimage_root
        self.synthetic = synthetic
        self.loader = loader
        self.app_version = app_version
        self.case: Case | None = None
        self.record: CaseRecord | None = None
        self.prepared: PreparedCase | None = None
        self.supersedes: int | None = None  # set in correction mode (server side only)
        self.last_saved: tuple[Case, int] | None = None
        self._event_uid = str(uuid.uuid4())
        self._skipped: set[tuple[int, int]] = set()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fqi-prefetch") \
            if prefetch else None
        self._prefetch: tuple[Case, Future[tuple[CaseRecord, PreparedCase | None, str | None]]] | None = None
        self.timings: dict[str, float] = {}
        self._build()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_manifest(cls, manifest: str | Path, *, reviewer: str, audit: str = DEFAULT_AUDIT,
                      **kwargs: Any) -> AdjudicationApp:
        """Open the manifest's database (migrating it if needed) and build the app."""
        from fracture_qi.manifest import read_manifest
        from fracture_qi.store import open_store

        m = read_manifest(manifest, verify=False)
        engine = open_store(m)
        keyroot = None
        outputs = getattr(m, "outputs", None)
        key_spec = getattr(outputs, "keyimages", None) if outputs is not None else None
        if key_spec is not None:
            keyroot = Path(getattr(key_spec, "path", key_spec))
        return cls(engine, reviewer, audit=audit,
                   settings=AdjudicationSettings.from_mapping(getattr(m, "adjudication", None)),
                   keyimage_root=keyroot, synthetic=bool(getattr(m, "synthetic", False)),
                   **kwargs)

    def _build(self) -> None:
        self.header = W.HTML()
        self.status = W.HTML()
        self.status.add_class("fqi-status")
        # viewer
        # images keep their own pixel size (a flex column would stretch them otherwise)
        self.sag = W.Image(format="png", layout=W.Layout(align_self="flex-start"))
        self.sag.add_class("fqi-sagittal")
        self.axial = W.Image(format="png", layout=W.Layout(align_self="flex-start"))
        self.axial.add_class("fqi-axial")
        self.keyimg = W.Image(format="png", layout=W.Layout(align_self="flex-start",
                                                            max_width="100%"))
        self.keyimg.add_class("fqi-keyimage")
        self.axial_note = W.HTML()
        self.key_note = W.HTML()
        self.window = W.ToggleButtons(options=list(WINDOWS), value="bone",
                                      style={"button_width": "90px"})
        self.slab = W.FloatSlider(value=4.0, min=0.0, max=float(MAX_SLAB_MM), step=1.0,
                                  description="Slab (mm)", continuous_update=False)
        self.offset = W.FloatSlider(value=0.0, min=-MAX_SLAB_MM / 2, max=MAX_SLAB_MM / 2,
                                    step=1.0, description="Left/right", continuous_update=False)
        self.zoom = W.FloatSlider(value=1.0, min=1.0, max=4.0, step=0.25, description="Zoom",
                                  continuous_update=False)
        self.overlay = W.Checkbox(value=True, description="AI overlay", indent=False)
        self.overlay.add_class("fqi-overlay")
        self.level_view = W.Dropdown(options=[("-", "")], value="", description="Axial at")
        for w in (self.window, self.slab, self.offset, self.zoom, self.overlay, self.level_view):
            w.observe(self._on_view_change, names="value")
        self.findings = W.HTML()
        self.patient = W.HTML()
        # form
        self.decision = W.ToggleButtons(options=DECISION_LABELS, value=None,
                                        style={"button_width": "auto"})
        self.decision.add_class("fqi-decision")
        self.decision.observe(self._on_decision_change, names="value")
        self.na_reason = W.Text(placeholder="why the images cannot be assessed",
                                description="Reason", layout=W.Layout(width="95%"))
        self.na_reason.add_class("fqi-na-reason")
        self.level_rows: list[LevelRow] = []
        self.levels_box = W.VBox()
        self.add_level = W.Button(description="Add vertebra")
        self.add_level.add_class("fqi-add-level")
        self.add_level.on_click(self._on_add_level)
        self.copy_ai = W.Button(description="Copy AI findings")
        self.copy_ai.add_class("fqi-copy-ai")
        self.copy_ai.on_click(self._on_copy_ai)
        self.known = W.RadioButtons(options=KNOWN_LABELS, value=None)
        self.known.add_class("fqi-known")
        self.action = W.Dropdown(options=ACTION_LABELS, value="", description="Action")
        self.action.add_class("fqi-action")
        self.action.observe(self._on_action_change, names="value")
        self.action_reason = W.Text(placeholder="why a referral is not appropriate",
                                    description="Reason", layout=W.Layout(width="95%"))
        self.note = W.Textarea(placeholder="note (optional)", layout=W.Layout(width="95%"))
        self.note.add_class("fqi-note")
        self.save_btn = W.Button(description="Save decision", button_style="success")
        self.save_btn.add_class("fqi-save")
        self.save_btn.on_click(self._on_save)
        self.skip_btn = W.Button(description="Skip case")
        self.skip_btn.add_class("fqi-skip")
        self.skip_btn.on_click(self._on_skip)
        self.next_btn = W.Button(description="Next case")
        self.next_btn.add_class("fqi-next")
        self.next_btn.on_click(self._on_next)
        self.correct_btn = W.Button(description="Correct my last decision", disabled=True,
                                    layout=W.Layout(width="auto"))
        self.correct_btn.add_class("fqi-correct")
        self.correct_btn.on_click(self._on_correct)

        self.confirmed_box = W.VBox([
            W.HTML("<div class='fqi-section'>Fractured vertebrae (level and Genant grade)</div>"),
            self.levels_box, W.HBox([self.add_level, self.copy_ai]),
            W.HTML("<div class='fqi-section'>Was it already known?</div>"), self.known,
            W.HTML("<div class='fqi-section'>What happens next?</div>"), self.action,
            self.action_reason,
        ])
        form = W.VBox([
            W.HTML("<div class='fqi-section'>Decision</div>"), self.decision, self.na_reason,
            self.confirmed_box, W.HTML("<div class='fqi-section'>Note</div>"), self.note,
            W.HBox([self.save_btn, self.skip_btn, self.next_btn]), self.correct_btn,
        ])
        form.add_class("fqi-panel")
        controls = W.VBox([self.window, self.slab, self.offset, self.zoom,
                           W.HBox([self.overlay, self.level_view])])
        viewer = W.VBox([self.sag, controls])
        viewer.add_class("fqi-panel")
        middle = W.VBox([
            W.HTML("<div class='fqi-section'>Axial slice at the chosen level</div>"), self.axial,
            self.axial_note,
            W.HTML("<div class='fqi-section'>AI result</div>"), self.findings,
            W.HTML("<div class='fqi-section'>Key image</div>"), self.keyimg, self.key_note,
        ])
        middle.add_class("fqi-panel")
        right = W.VBox([self.patient, form], layout=W.Layout(min_width="420px"))
        self.widget = W.VBox([W.HTML(CSS), self.header, self.status,
                              W.HBox([viewer, middle, right])])
        self.widget.add_class("fqi-app")
        self._set_visibility()

    # ------------------------------------------------------------------ display
    def show(self) -> None:
        """Open the first case and display the app (in a notebook or Voila)."""
        from IPython.display import display

        self.start()
        display(self.widget)

    @_guarded
    def start(self) -> None:
        """Check the reviewer and open the first case."""
        if not self.reviewer:
            self._set_header()
            self._enable_form(False)
            raise ValidationError(
                ["reviewer: no reviewer ID was given; start the app with "
                 "fracture-qi adjudicate --reviewer YOUR_ID (or set reviewer in the notebook)"],
                source="adjudication app")
        self.open_next()

    def _status(self, message: str, kind: str = "info") -> None:
        self.status.value = f"<div class='fqi-status-{kind}'>{_esc(message)}</div>"

    def _set_header(self) -> None:
        progress = worklist_progress(self.engine, self.audit) if self.reviewer else None
        done = (f"{progress.n_reads_done} of {progress.n_reads_needed} reads done"
                if progress else "")
        banner = ("<span class='fqi-banner'>SYNTHETIC DEMO DATA: not real patients; simulated "
                  "decisions are marked as such</span> " if self.synthetic else "")
        self.header.value = (
            f"<h3 style='margin:4px 0'>Fracture adjudication</h3>{banner}"
            f"<div>Reviewer <b>{_esc(self.reviewer or '(none)')}</b> &middot; audit "
            f"<b>{_esc(self.audit)}</b> &middot; {done}</div>")

    def _enable_form(self, on: bool) -> None:
        for w in (self.decision, self.na_reason, self.add_level, self.copy_ai, self.known,
                  self.action, self.action_reason, self.note, self.save_btn, self.skip_btn):
            w.disabled = not on

    # ------------------------------------------------------------------ cases
    def _load(self, case: Case) -> tuple[CaseRecord, PreparedCase | None, str | None]:
        """Read and prepare a case (runs in the prefetch thread or inline)."""
        rec = load_case_record(self.engine, case)
        try:
            prep = prepare_case(rec.instance_paths, rec.findings, keyimage_path=rec.keyimage_path,
                                keyimage_root=self.keyimage_root, loader=self.loader)
            return rec, prep, None
        except FractureQIError as e:
            logger.warning("case %s: images cannot be shown: %s", case.study_id, e)
            return rec, None, str(e)

    def _start_prefetch(self) -> None:
        if self._pool is None:
            return
        current = {self.case.key} if self.case else set()
        try:
            cands = [c for c in available_cases(self.engine, self.reviewer, audit=self.audit,
                                                limit=3) if c.key not in current | self._skipped]
        except Exception:  # prefetch is an optimisation: never break the app for it
            logger.warning("prefetch listing failed", exc_info=True)
            return
        if not cands:
            self._prefetch = None
            return
        nxt = cands[0]
        if self._prefetch is not None and self._prefetch[0].key == nxt.key:
            return
        self._prefetch = (nxt, self._pool.submit(self._load, nxt))

    def open_next(self) -> bool:
        """Release nothing, claim the next case and show it; ``False`` when none is left."""
        t0 = dt.datetime.now()
        pre = self._prefetch
        case = claim_next(self.engine, self.reviewer, audit=self.audit,
                          lease_minutes=self.settings.lease_minutes, exclude=self._skipped,
                          prefer=pre[0] if pre else None)
        self.supersedes = None
        if case is None:
            self.case = self.record = self.prepared = None
            self._clear_form()
            self._enable_form(False)
            for img in (self.sag, self.axial, self.keyimg):
                _set_image(img, None)
            self.patient.value = self.findings.value = self.key_note.value = ""
            self.axial_note.value = ""
            self._set_header()
            self._status("No cases left for you on this worklist. Thank you!", "ok")
            return False
        if pre is not None and pre[0].key == case.key:
            rec, prep, err = pre[1].result()
            rec.case = case
        else:
            rec, prep, err = self._load(case)
        self._prefetch = None
        self._show_case(case, rec, prep, err)
        self.timings["open_s"] = (dt.datetime.now() - t0).total_seconds()
        self._start_prefetch()
        return True

    def _show_case(self, case: Case, rec: CaseRecord, prep: PreparedCase | None,
                   err: str | None) -> None:
        self.case, self.record, self.prepared = case, rec, prep
        self._event_uid = str(uuid.uuid4())
        self._clear_form()
        self._enable_form(True)
        self._set_header()
        self._show_patient(rec)
        self._show_findings(rec, prep)
        levels = prep.levels() if prep else []
        self.level_view.unobserve(self._on_view_change, names="value")
        self.level_view.options = [("-", "")] + [(lv, lv) for lv in levels]
        worst = max((f for f in (prep.findings if prep else []) if f.centre_zyx),
                    key=lambda f: f.grade, default=None)
        self.level_view.value = worst.ident if worst is not None and worst.grade >= 1 else ""
        self.level_view.observe(self._on_view_change, names="value")
        _set_image(self.keyimg, prep.keyimage_png if prep else None)
        self.key_note.value = "" if prep and prep.keyimage_png else "<i>No key image stored.</i>"
        if prep is None:
            _set_image(self.sag, None)
            _set_image(self.axial, None)
            self._status(f"The images of this case cannot be shown: {err}. You can still "
                         "record it as not assessable.", "error")
        else:
            self._render()
            self._status(f"Case opened: read {case.read_number}"
                         + (" (second, blind read)" if case.read_number == 2 else "")
                         + f", held for you until {case.held_until:%H:%M} UTC"
                         if case.held_until else "Case opened", "info")

    def _show_patient(self, rec: CaseRecord) -> None:
        c = rec.case
        dob = rec.birth_date.isoformat() if rec.birth_date else ""
        rows = [
            ("Name", rec.patient_name), ("NHS number", rec.nhs_number), ("MRN", rec.mrn),
            ("Date of birth", dob), ("Sex", rec.sex), ("Referral source", rec.referral_source),
            ("CT date", rec.study_date.isoformat() if rec.study_date else ""),
            ("Accession", rec.accession_number), ("Study", rec.description), ("Site", rec.site),
            ("Worklist", STRATUM_LABELS.get(c.stratum, c.stratum)
             + (" &middot; double read" if c.double_read else "")),
        ]
        body = "".join(f"<tr><td>{_esc(k)}</td><td><b>{v if k == 'Worklist' else _esc(v)}</b>"
                       "</td></tr>" for k, v in rows)
        self.patient.value = (
            "<div class='fqi-panel fqi-patient'><div class='fqi-section'>Patient (confidential)"
            f"</div><table>{body}</table></div>")

    def _show_findings(self, rec: CaseRecord, prep: PreparedCase | None) -> None:
        head = (f"<div>{'<b>Flagged</b>' if rec.flagged else 'Not flagged'} &middot; highest "
                f"grade {rec.max_grade} &middot; model {_esc(rec.model)}"
                + (f" &middot; L1 {rec.l1_hu:.0f} HU" if rec.l1_hu is not None else "")
                + (" (low density)" if rec.low_density else "") + "</div>")
        fs = prep.findings if prep else name_findings([Finding.from_row(r) for r in rec.findings])
        fs = sorted(fs, key=lambda f: -(f.centre_zyx or (0.0,))[0])  # cranial first, as shown
        rows = "".join(
            f"<tr{BOLD if f.grade >= 1 else ''}><td>{_esc(f.ident)}"
            f"</td><td>{f.grade}</td><td>{_esc(f.morph_type)}</td><td>{_fmt(f.ha_mm)}</td>"
            f"<td>{_fmt(f.hm_mm)}</td><td>{_fmt(f.hp_mm)}</td></tr>" for f in fs)
        self.findings.value = head + (
            "<table class='fqi-findings'><tr><th>Level</th><th>Grade</th><th>Type</th>"
            f"<th>Ha mm</th><th>Hm mm</th><th>Hp mm</th></tr>{rows}</table>" if rows else "")

    # ------------------------------------------------------------------ viewer
    def view_state(self) -> ViewState:
        """The viewer controls as a :class:`ViewState` (clamped when rendering)."""
        return ViewState(window=self.window.value, slab_mm=self.slab.value,
                         offset_mm=self.offset.value, zoom=self.zoom.value,
                         overlay=bool(self.overlay.value), level=self.level_view.value or None)

    def _render(self) -> None:
        if self.prepared is None:
            return
        st = self.view_state()
        _set_image(self.sag, render_sagittal(self.prepared, st))
        ax = render_axial(self.prepared, st)
        _set_image(self.axial, ax)
        self.axial_note.value = "" if ax else "<i>Choose a level under the image.</i>"

    @_guarded
    def _on_view_change(self, _change: Any) -> None:
        self._render()
        self.keep_lease()

    def keep_lease(self, now: dt.datetime | None = None) -> bool:
        """Renew the hold on the open case once half the lease has passed (the nurse is still
        working on it); ``False``, with a warning, when another nurse took it after it ran out.
        """
        case = self.case
        if case is None or case.held_until is None or self.supersedes is not None:
            return True
        now = now or dt.datetime.now(dt.timezone.utc)
        half = dt.timedelta(minutes=self.settings.lease_minutes / 2)
        if now < case.held_until - half:
            return True
        renewed = claim_case(self.engine, case, self.reviewer,
                             lease_minutes=self.settings.lease_minutes, now=now)
        if renewed is None:
            self._status("Your hold on this case ran out and it has been taken or decided by "
                         "someone else; saving now will probably be refused. Press Next case.",
                         "error")
            return False
        self.case = renewed
        return True

    # ------------------------------------------------------------------ form
    def _clear_form(self) -> None:
        self.decision.value = None
        self.na_reason.value = ""
        self.level_rows = []
        self.levels_box.children = ()
        self.known.value = None
        self.action.value = ""
        self.action_reason.value = ""
        self.note.value = ""
        self._set_visibility()

    def _set_visibility(self) -> None:
        def show(w: W.Widget, on: bool) -> None:
            w.layout.display = None if on else "none"

        show(self.na_reason, self.decision.value == Decision.NOT_ASSESSABLE.value)
        show(self.confirmed_box, self.decision.value == Decision.CONFIRMED.value)
        show(self.action_reason, self.action.value == Action.NOT_APPROPRIATE.value)

    @_guarded
    def _on_decision_change(self, _change: Any) -> None:
        if self.decision.value == Decision.CONFIRMED.value and not self.level_rows:
            self._add_row()
        self._set_visibility()
        self.keep_lease()

    @_guarded
    def _on_action_change(self, _change: Any) -> None:
        self._set_visibility()

    def _add_row(self, level: str | None = None, grade: int | None = None) -> None:
        if len(self.level_rows) >= len(LEVELS):
            return
        row = LevelRow(self._remove_row, level, grade)
        self.level_rows.append(row)
        self.levels_box.children = tuple(r.box for r in self.level_rows)

    def _remove_row(self, row: LevelRow) -> None:
        self.level_rows = [r for r in self.level_rows if r is not row]
        self.levels_box.children = tuple(r.box for r in self.level_rows)

    @_guarded
    def _on_add_level(self, _b: Any) -> None:
        self._add_row()

    @_guarded
    def _on_copy_ai(self, _b: Any) -> None:
        if self.record is None:
            return
        self.level_rows = []
        for f in self.record.findings:
            if f["genant_grade"] >= 1 and f["level"] in LEVELS:
                self._add_row(f["level"], int(f["genant_grade"]))
        if not self.level_rows:
            self._add_row()
        self.levels_box.children = tuple(r.box for r in self.level_rows)

    def form_data(self) -> dict[str, Any]:
        """The decision as the form states it, plus the case facts the server holds.

        Widget values are untrusted and go through validation; the study, read, worklist
        item and screening come from the server's own state, never from a widget.
        """
        if self.case is None:
            raise ValidationError(["case: no case is open"], source="adjudication app")
        decision = self.decision.value
        data: dict[str, Any] = {
            "study_id": self.case.study_id,
            "read_number": self.case.read_number,
            "worklist_item_id": self.case.worklist_item_id,
            "screening_id": self.case.screening_id,
            "decision": decision,
            "note": self.note.value,
            "event_uid": self._event_uid,
        }
        if decision == Decision.NOT_ASSESSABLE.value:
            data["not_assessable_reason"] = self.na_reason.value
        if decision == Decision.CONFIRMED.value:
            data["levels"] = [r.value() for r in self.level_rows]
            data["previously_known"] = self.known.value
            data["action"] = self.action.value or None
            if self.action.value == Action.NOT_APPROPRIATE.value:
                data["action_reason"] = self.action_reason.value
        return data

    @_guarded
    def _on_save(self, _b: Any) -> None:
        self.save()

    def save(self) -> int | None:
        """Validate and record the form; on success open the next case. Returns the event id."""
        if self.case is None:
            self._status("No case is open.", "error")
            return None
        data = self.form_data()
        try:
            ev = record_decision(self.engine, data, self.reviewer, self.app_version,
                                 supersedes=self.supersedes)
        except ValidationError as e:
            self._status("Not saved. Please fix: " + "; ".join(_friendly(p) for p in e.problems),
                         "error")
            return None
        except ConflictError as e:
            self.save_btn.disabled = True
            self._status(f"Not saved: {e}. Press Next case to go on.", "error")
            if self.case is not None:
                release_claim(self.engine, self.case, self.reviewer)
            return None
        saved_case = self.case
        release_claim(self.engine, saved_case, self.reviewer)
        self.last_saved = (saved_case, ev.id)
        self.correct_btn.disabled = False
        when = ev.recorded_at.strftime("%H:%M:%S")
        word = "Correction saved" if self.supersedes else "Saved"
        self.open_next()
        # after open_next so the confirmation is what the nurse reads
        prefix = f"{word} (decision #{ev.id}, {when} UTC). "
        self.status.value = (f"<div class='fqi-status-ok'>{_esc(prefix)}</div>"
                             + self.status.value)
        return ev.id

    @_guarded
    def _on_skip(self, _b: Any) -> None:
        if self.case is not None:
            release_claim(self.engine, self.case, self.reviewer)
            self._skipped.add(self.case.key)
        self.open_next()

    @_guarded
    def _on_next(self, _b: Any) -> None:
        if self.case is not None:
            self._skipped.add(self.case.key)
        self.open_next()

    @_guarded
    def _on_correct(self, _b: Any) -> None:
        """Reopen the last saved case to save a correction that supersedes it."""
        if self.last_saved is None:
            return
        case, _ = self.last_saved
        latest = current_decision(self.engine, case.study_id, case.read_number)
        if latest is None or latest.reviewer != self.reviewer:
            self._status("That decision was changed by someone else; it cannot be corrected "
                         "from here.", "error")
            return
        if self.case is not None and self.case.key != case.key:
            release_claim(self.engine, self.case, self.reviewer)
        rec, prep, err = self._load(case)
        self._show_case(case, rec, prep, err)
        self.supersedes = latest.id
        # rows first: setting the decision to confirmed adds an empty row only when there are none
        for lv in latest.levels or []:
            self._add_row(lv.get("level"), lv.get("grade"))
        self.decision.value = latest.decision
        self.known.value = latest.previously_known
        self.action.value = latest.action or ""
        self.action_reason.value = latest.action_reason or ""
        self.na_reason.value = latest.not_assessable_reason or ""
        self.note.value = latest.note or ""
        self._set_visibility()
        self._status(f"Correcting your decision #{latest.id}: change it and save; the "
                     "original is kept and marked as superseded.", "info")

    def close(self) -> None:
        """Give back the open case and stop the prefetch thread."""
        if self.case is not None and self.reviewer:
            release_claim(self.engine, self.case, self.reviewer)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _set_image(widget: W.Image, png: bytes | None) -> None:
    """Show PNG bytes at their own pixel width, or hide the image when there are none."""
    if not png:
        widget.layout.display = "none"
        widget.value = b""
        return
    width = int.from_bytes(png[16:20], "big")  # IHDR width
    widget.value = png
    widget.layout.width = f"{width}px"
    widget.layout.display = None


def _friendly(problem: str) -> str:
    """``levels.0.grade: ...`` -> ``vertebra 1 grade: ...`` for the nurse.

    Examples
    --------
    >>> _friendly("levels.0.grade: Input should be greater than or equal to 1")
    'vertebra 1 grade: Input should be greater than or equal to 1'
    >>> _friendly("previously_known: choose none")
    'previously known: choose none'
    """
    field, sep, rest = problem.partition(":")
    m = re.fullmatch(r"levels\.(\d+)\.(\w+)", field)
    if m:
        field = f"vertebra {int(m.group(1)) + 1} {m.group(2)}"
    return field.replace("_", " ") + sep + rest


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.1f}"
