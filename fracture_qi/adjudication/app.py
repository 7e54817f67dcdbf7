"""The adjudication app (ipywidgets): worklist, viewer and decision form in one screen.

Runs inside JupyterLab or as a Voila app (``fracture-qi adjudicate`` for one nurse on
127.0.0.1, ``fracture-qi serve`` for the team, where the reviewer is the signed-in user).
The notebook is thin::

    AdjudicationApp.from_manifest(manifest, reviewer=reviewer, audit=audit).show()

Trust model: in Voila, the browser can set any widget value and fire any button through the
comm channel. So the app keeps the facts that matter on the server (which case is open, who
the reviewer is, which event a correction supersedes, whether the AI's result has been
shown), reads the form's widgets only as untrusted input, validates everything through
:func:`~.decisions.record_decision`, and never sends an exception's traceback to the page:
callbacks are wrapped by :func:`_guarded`, which logs the details on the server and shows a
short message.

What a nurse can rely on (issue 18):

* the worklist fills itself when the app opens or runs out of cases (newly screened studies);
* an unsaved decision is never dropped without asking; *Skip* gives the case back to the
  worklist, *Next* keeps it held for her; both come back after the other cases;
* every problem with the form is named the way the form asks it;
* audit-sample cases are read blind (no worklist label, no AI result, no overlay) until she
  has saved her answer, which is kept as the blind read;
* every case opening, decision and look at the AI's result is in the access log
  (:mod:`fracture_qi.accesslog`) before it happens.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import ipywidgets as W
from sqlalchemy import Engine

from fracture_qi.accesslog import AccessAction, record_access
from fracture_qi.adjudication.decisions import (
    APP_VERSION,
    Action,
    Decision,
    current_decision,
    record_decision,
)
from fracture_qi.adjudication.form import (
    ACTION_LABELS,
    DECISION_LABELS,
    KNOWN_LABELS,
    LevelRow,
    form_problems,
    friendly,
)
from fracture_qi.adjudication.panels import (
    BLIND_FINDINGS_HTML,
    CSS,
    esc,
    findings_html,
    history_html,
    patient_html,
)
from fracture_qi.adjudication.sampling import AUDIT_NEGATIVE
from fracture_qi.adjudication.viewer import (
    MAX_SLAB_MM,
    WINDOWS,
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
    refresh_worklist,
    release_claim,
    worklist_progress,
)
from fracture_qi.dicom.geometry import CTVolume
from fracture_qi.errors import ConflictError, FractureQIError, StoreError, ValidationError
from fracture_qi.screening.types import LEVELS

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

#: the viewer's starting zoom and left/right offset, set again for every case
DEFAULT_ZOOM = 1.0
DEFAULT_OFFSET_MM = 0.0
#: the role allowed to read cases (see :mod:`fracture_qi.accounts`)
NURSE_ROLE = "nurse"

SKIP_TIP = ("Give this case back to the worklist (a colleague may take it) and open the next; "
            "it comes back to you after the other cases")
NEXT_TIP = ("Open the next case and keep this one held for you; it comes back after the "
            "other cases")


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


class AdjudicationApp:
    """The nurse's screen. Build it with :meth:`from_manifest` and call :meth:`show`.

    Parameters
    ----------
    engine
        The suite's database.
    reviewer
        The nurse's ID, fixed for the session (the signed-in user, or ``--reviewer``),
        recorded on every event.
    audit
        Worklist name.
    settings
        Lease length and sampling rates (the worklist is refreshed with them).
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
    role
        The signed-in user's role; a role other than ``nurse`` is shown no case. ``None``
        (a single-user session) is taken as a nurse.
    client, via
        Where the browser is and through what it came, for the access log.
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
        role: str | None = None,
        client: str | None = None,
        via: str = "adjudication app",
    ) -> None:
        self.engine = engine
        self.reviewer = (reviewer or "").strip()
        self.audit = audit or DEFAULT_AUDIT
        self.settings = settings or AdjudicationSettings()
        self.keyimage_root = keyimage_root
        self.synthetic = synthetic
        self.loader = loader
        self.app_version = app_version
        self.role = role or None
        self.client = client or None
        self.via = via
        self.case: Case | None = None
        self.record: CaseRecord | None = None
        self.prepared: PreparedCase | None = None
        self.supersedes: int | None = None  # set in correction mode (server side only)
        self.last_saved: tuple[Case, int] | None = None
        self.revealed: set[tuple[int, int]] = set()  # cases whose AI result she asked to see
        self._event_uid = str(uuid.uuid4())
        # cases passed over (Skip or Next), in order: they come back after the others
        self._later: dict[tuple[int, int], Case] = {}
        self._pending: Callable[[], None] | None = None  # waits for "discard and go on"
        self._form_saved = False  # the form shows a decision already saved (a blind read)
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
        # viewer: images keep their own aspect (CSS fits the sagittal to the window height)
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
                                  description="Slab (mm)", continuous_update=False,
                                  layout=W.Layout(width="320px"))
        self.offset = W.FloatSlider(value=DEFAULT_OFFSET_MM, min=-MAX_SLAB_MM / 2,
                                    max=MAX_SLAB_MM / 2, step=1.0, description="Left/right",
                                    continuous_update=False, layout=W.Layout(width="320px"))
        self.zoom = W.FloatSlider(value=DEFAULT_ZOOM, min=1.0, max=4.0, step=0.25,
                                  description="Zoom", continuous_update=False,
                                  layout=W.Layout(width="320px"))
        self.overlay = W.Checkbox(value=True, description="AI overlay", indent=False)
        self.overlay.add_class("fqi-overlay")
        self.level_view = W.Dropdown(options=[("-", "")], value="", description="Axial at")
        for w in (self.window, self.slab, self.offset, self.zoom, self.overlay, self.level_view):
            w.observe(self._on_view_change, names="value")
        self.findings = W.HTML()
        self.findings.add_class("fqi-ai-result")
        self.patient = W.HTML()
        self.history = W.HTML()
        self.history.add_class("fqi-history-box")
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
        self.add_level = W.Button(description="Add vertebra", tooltip="Add a fractured vertebra")
        self.add_level.add_class("fqi-add-level")
        self.add_level.on_click(self._on_add_level)
        self.copy_ai = W.Button(description="Copy AI findings",
                                tooltip="Fill the rows with the vertebrae the AI graded 1-3")
        self.copy_ai.add_class("fqi-copy-ai")
        self.copy_ai.on_click(self._on_copy_ai)
        self.known = W.RadioButtons(options=KNOWN_LABELS, value=None)
        self.known.add_class("fqi-known")
        self.action = W.Dropdown(options=ACTION_LABELS, value="", description="Action")
        self.action.add_class("fqi-action")
        self.action.observe(self._on_action_change, names="value")
        self.action_reason = W.Text(placeholder="why a referral is not appropriate",
                                    description="Reason", layout=W.Layout(width="95%"))
        self.note = W.Textarea(placeholder="note (optional)",
                               layout=W.Layout(width="95%", height="48px"))
        self.note.add_class("fqi-note")
        self.save_btn = W.Button(description="Save decision", button_style="success",
                                 tooltip="Save this decision and open the next case")
        self.save_btn.add_class("fqi-save")
        self.save_btn.on_click(self._on_save)
        self.skip_btn = W.Button(description="Skip: back to the worklist", tooltip=SKIP_TIP,
                                 layout=W.Layout(width="auto"))
        self.skip_btn.add_class("fqi-skip")
        self.skip_btn.on_click(self._on_skip)
        self.next_btn = W.Button(description="Next: keep held for me", tooltip=NEXT_TIP,
                                 layout=W.Layout(width="auto"))
        self.next_btn.add_class("fqi-next")
        self.next_btn.on_click(self._on_next)
        self.correct_btn = W.Button(description="Correct my last decision", disabled=True,
                                    layout=W.Layout(width="auto"))
        self.correct_btn.add_class("fqi-correct")
        self.correct_btn.on_click(self._on_correct)
        # asked before an unsaved decision would be dropped
        self.discard_btn = W.Button(description="Discard it and go on", button_style="warning")
        self.discard_btn.add_class("fqi-discard")
        self.discard_btn.on_click(self._on_discard)
        self.keep_btn = W.Button(description="Keep editing")
        self.keep_btn.add_class("fqi-keep")
        self.keep_btn.on_click(self._on_keep)
        self.confirm_box = W.VBox([
            W.HTML("<b>This decision is not saved.</b> Going on drops what you entered."),
            W.HBox([self.keep_btn, self.discard_btn])])
        self.confirm_box.add_class("fqi-confirm")
        # after a blind read is saved: see the AI's result, or go on
        self.reveal_btn = W.Button(description="Show the AI's result", button_style="info")
        self.reveal_btn.add_class("fqi-reveal-ai")
        self.reveal_btn.on_click(self._on_reveal)
        self.after_next_btn = W.Button(description="Next case", button_style="success")
        self.after_next_btn.add_class("fqi-after-next")
        self.after_next_btn.on_click(self._on_after_next)
        self.reveal_note = W.HTML()
        self.reveal_box = W.VBox([self.reveal_note,
                                  W.HBox([self.reveal_btn, self.after_next_btn])])
        self.reveal_box.add_class("fqi-reveal")

        self.confirmed_box = W.VBox([
            W.HTML("<div class='fqi-section'>Fractured vertebrae (level and Genant grade)</div>"),
            self.levels_box, W.HBox([self.add_level, self.copy_ai]),
            W.HTML("<div class='fqi-section'>Was it already known?</div>"),
            W.HBox([self.known, self.history]),
            W.HTML("<div class='fqi-section'>What happens next?</div>"), self.action,
            self.action_reason,
        ])
        fields = W.VBox([
            self.patient,
            W.HTML("<div class='fqi-section'>Decision</div>"), self.decision, self.na_reason,
            self.confirmed_box, W.HTML("<div class='fqi-section'>Note</div>"), self.note,
        ], layout=W.Layout(flex="1 1 auto", overflow="auto", min_height="0"))
        fields.add_class("fqi-fields")
        actions = W.VBox([
            self.confirm_box, self.reveal_box,
            W.HBox([self.save_btn, self.skip_btn, self.next_btn],
                   layout=W.Layout(flex_flow="row wrap")),
            self.correct_btn,
        ], layout=W.Layout(flex="0 0 auto"))
        actions.add_class("fqi-actions")
        right = W.VBox([fields, actions], layout=W.Layout(
            width="460px", min_width="420px", height="100%", overflow="hidden"))
        right.add_class("fqi-panel")
        right.add_class("fqi-form")
        controls = W.VBox([self.window, self.slab, self.offset, self.zoom,
                           W.HBox([self.overlay, self.level_view])])
        viewer = W.VBox([self.sag, controls], layout=W.Layout(
            height="100%", overflow="auto", flex="0 1 auto"))
        viewer.add_class("fqi-panel")
        viewer.add_class("fqi-viewer")
        middle = W.VBox([
            W.HTML("<div class='fqi-section'>Axial slice at the chosen level</div>"), self.axial,
            self.axial_note,
            W.HTML("<div class='fqi-section'>AI result</div>"), self.findings,
            W.HTML("<div class='fqi-section'>Key image</div>"), self.keyimg, self.key_note,
        ], layout=W.Layout(height="100%", overflow="auto", flex="1 1 300px", min_width="260px"))
        middle.add_class("fqi-panel")
        top = W.VBox([self.header, self.status], layout=W.Layout(flex="0 0 auto"))
        top.add_class("fqi-top")
        main = W.HBox([viewer, middle, right], layout=W.Layout(
            flex="1 1 auto", min_height="0", overflow="hidden", width="100%"))
        self.widget = W.VBox([W.HTML(CSS), top, main])
        self.widget.add_class("fqi-app")
        self._set_visibility()
        self._show_box(self.confirm_box, False)
        self._show_box(self.reveal_box, False)

    # ------------------------------------------------------------------ display
    def show(self) -> None:
        """Open the first case and display the app (in a notebook or Voila)."""
        from IPython.display import display

        self.start()
        display(self.widget)

    @_guarded
    def start(self) -> None:
        """Check the reviewer and role, fill the worklist, and open the first case."""
        if not self.reviewer:
            self._set_header()
            self._enable_form(False)
            raise ValidationError(
                ["reviewer: no reviewer ID was given; start the app with "
                 "fracture-qi adjudicate --reviewer YOUR_ID (or set reviewer in the notebook)"],
                source="adjudication app")
        if self.role is not None and self.role != NURSE_ROLE:
            self._set_header()
            self._enable_form(False)
            raise ValidationError(
                [f"role: {self.reviewer} signed in as {self.role}; reading cases needs the "
                 "nurse role (ask the administrator)"], source="adjudication app")
        refresh_worklist(self.engine, self.settings, audit=self.audit)
        self.open_next()

    def _status(self, message: str, kind: str = "info") -> None:
        self.status.value = f"<div class='fqi-status-{kind}'>{esc(message)}</div>"

    def _set_header(self) -> None:
        progress = worklist_progress(self.engine, self.audit) if self.reviewer else None
        done = ""
        if progress is not None:
            done = f"{progress.n_reads_done} of {progress.n_reads_needed} reads done"
            if self._later:
                done += f" &middot; {len(self._later)} passed over by you, coming back"
        banner = ("<span class='fqi-banner'>SYNTHETIC DEMO DATA: not real patients; simulated "
                  "decisions are marked as such</span> " if self.synthetic else "")
        self.header.value = (
            f"<div><span class='fqi-title'>Fracture adjudication</span>{banner}"
            f"Reviewer <b>{esc(self.reviewer or '(none)')}</b> &middot; audit "
            f"<b>{esc(self.audit)}</b> &middot; {done}</div>")

    def _enable_form(self, on: bool) -> None:
        for w in (self.decision, self.na_reason, self.add_level, self.copy_ai, self.known,
                  self.action, self.action_reason, self.note, self.save_btn, self.skip_btn,
                  self.next_btn):
            w.disabled = not on

    @staticmethod
    def _show_box(w: W.Widget, on: bool) -> None:
        w.layout.display = None if on else "none"

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
                                                limit=3)
                     if c.key not in current | set(self._later)]
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

    def _claim(self, pre: Case | None) -> tuple[Case | None, str]:
        """The next case to show and a note on where it came from."""
        lease = self.settings.lease_minutes
        case = claim_next(self.engine, self.reviewer, audit=self.audit, lease_minutes=lease,
                          exclude=set(self._later), prefer=pre)
        if case is not None:
            return case, ""
        # nothing new: screened studies may have arrived since the app opened
        added = refresh_worklist(self.engine, self.settings, audit=self.audit)
        if added is not None and added.n_added:
            case = claim_next(self.engine, self.reviewer, audit=self.audit,
                              lease_minutes=lease, exclude=set(self._later))
            if case is not None:
                return case, f"{added.n_added} newly screened case(s) added to the worklist. "
        # then the cases she passed over, in the order she passed them
        for key, old in list(self._later.items()):
            del self._later[key]
            got = claim_case(self.engine, old, self.reviewer, lease_minutes=lease)
            if got is not None:
                return got, "Back to a case you passed over earlier. "
        return None, ""

    def open_next(self) -> bool:
        """Claim the next case and show it; ``False`` when none is left for this reviewer."""
        t0 = dt.datetime.now()
        pre = self._prefetch
        case, note = self._claim(pre[0] if pre else None)
        self.supersedes = None
        self._pending = None
        self._show_box(self.confirm_box, False)
        self._show_box(self.reveal_box, False)
        if case is None:
            self.case = self.record = self.prepared = None
            self._clear_form()
            self._enable_form(False)
            for img in (self.sag, self.axial, self.keyimg):
                _set_image(img, None)
            self.patient.value = self.findings.value = self.key_note.value = ""
            self.axial_note.value = self.history.value = ""
            self._set_header()
            progress = worklist_progress(self.engine, self.audit)
            rest = (f" {progress.remaining} read(s) of this worklist are held by colleagues or "
                    "wait for a second nurse." if progress.remaining else "")
            self._status("No cases left for you on this worklist. Thank you!" + rest, "ok")
            return False
        if pre is not None and pre[0].key == case.key:
            rec, prep, err = pre[1].result()
            rec.case = case
        else:
            rec, prep, err = self._load(case)
        self._prefetch = None
        self._show_case(case, rec, prep, err, note=note)
        self.timings["open_s"] = (dt.datetime.now() - t0).total_seconds()
        self._start_prefetch()
        return True

    def is_blind(self, case: Case | None = None) -> bool:
        """Whether *case* (default: the open one) is read without the AI's result on screen."""
        c = case or self.case
        return bool(c is not None and c.stratum == AUDIT_NEGATIVE and c.key not in self.revealed)

    def _log(self, action: AccessAction, detail: dict[str, Any] | None = None,
             rec: CaseRecord | None = None) -> None:
        rec = rec or self.record
        record_access(self.engine, username=self.reviewer, role=self.role or NURSE_ROLE,
                      action=action, study_id=rec.case.study_id if rec else None,
                      patient_key=rec.patient_key if rec else None, detail=detail,
                      client=self.client, via=self.via)

    def _show_case(self, case: Case, rec: CaseRecord, prep: PreparedCase | None,
                   err: str | None, *, note: str = "", correction: bool = False) -> None:
        # the access log first: a case that cannot be logged is not shown
        try:
            self._log(AccessAction.CASE_OPENED, {"read": case.read_number,
                                                 "correction": correction,
                                                 "blind": self.is_blind(case)}, rec)
        except StoreError:
            self.case = self.record = self.prepared = None
            self.patient.value = self.findings.value = self.history.value = ""
            self._enable_form(False)
            raise
        self.case, self.record, self.prepared = case, rec, prep
        self._event_uid = str(uuid.uuid4())
        self._clear_form()
        self._enable_form(True)
        self._set_header()
        self._reset_view()
        self._show_details()
        if prep is None:
            _set_image(self.sag, None)
            _set_image(self.axial, None)
            self._status(f"{note}The images of this case cannot be shown: {err}. You can still "
                         "record it as not assessable.", "error")
        else:
            self._render()
            held = (f", held for you until {case.held_until:%H:%M} UTC"
                    if case.held_until else "")
            blind = (" Read it blind: the AI's result is hidden until you save your answer."
                     if self.is_blind() else "")
            self._status(f"{note}Case opened: read {case.read_number}"
                         + (" (second, blind read)" if case.read_number == 2 else "")
                         + held + "." + blind, "info")

    def _reset_view(self) -> None:
        """Each case opens at its own view: zoom 1, centred, the AI overlay as its kind allows."""
        blind = self.is_blind()
        prep = self.prepared
        for w in (self.zoom, self.offset, self.overlay, self.level_view):
            w.unobserve(self._on_view_change, names="value")
        try:
            self.zoom.value = DEFAULT_ZOOM
            self.offset.value = DEFAULT_OFFSET_MM
            self.overlay.value = not blind
            self.overlay.disabled = blind
            levels = prep.levels() if prep else []
            self.level_view.options = [("-", "")] + [(lv, lv) for lv in levels]
            worst = max((f for f in (prep.findings if prep else []) if f.centre_zyx),
                        key=lambda f: f.grade, default=None)
            # the AI's worst vertebra is where a flagged case opens; a blind read opens nowhere
            self.level_view.value = (worst.ident if worst is not None and worst.grade >= 1
                                     and not blind else "")
        finally:
            for w in (self.zoom, self.offset, self.overlay, self.level_view):
                w.observe(self._on_view_change, names="value")

    def _show_details(self) -> None:
        """Patient, history, AI result and key image, as blind reading allows."""
        rec, prep = self.record, self.prepared
        if rec is None:
            return
        blind = self.is_blind()
        self.patient.value = patient_html(rec, show_stratum=not blind)
        self.history.value = history_html(rec)
        self.findings.value = BLIND_FINDINGS_HTML if blind else findings_html(rec, prep)
        self._show_box(self.copy_ai, not blind)
        key_png = prep.keyimage_png if prep and not blind else None
        _set_image(self.keyimg, key_png)
        self.key_note.value = ("<i>Hidden with the AI's result.</i>" if blind else
                               "" if key_png else "<i>No key image stored.</i>")

    # ------------------------------------------------------------------ viewer
    def view_state(self) -> ViewState:
        """The viewer controls as a :class:`ViewState` (clamped when rendering).

        The overlay is off while the case is read blind, whatever the browser sent.
        """
        return ViewState(window=self.window.value, slab_mm=self.slab.value,
                         offset_mm=self.offset.value, zoom=self.zoom.value,
                         overlay=bool(self.overlay.value) and not self.is_blind(),
                         level=self.level_view.value or None)

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
                         "someone else; saving now will probably be refused. Press Skip.",
                         "error")
            return False
        self.case = renewed
        return True

    # ------------------------------------------------------------------ form
    def _clear_form(self) -> None:
        self._form_saved = False
        self.decision.value = None
        self.na_reason.value = ""
        self.level_rows = []
        self.levels_box.children = ()
        self.known.value = None
        self.action.value = ""
        self.action_reason.value = ""
        self.note.value = ""
        self._set_visibility()

    def is_dirty(self) -> bool:
        """Whether the form holds anything the nurse entered and has not saved."""
        if self._form_saved:
            return False
        return bool(self.decision.value or self.level_rows or self.known.value
                    or self.action.value or self.na_reason.value.strip()
                    or self.action_reason.value.strip() or self.note.value.strip())

    def _set_visibility(self) -> None:
        self._show_box(self.na_reason, self.decision.value == Decision.NOT_ASSESSABLE.value)
        self._show_box(self.confirmed_box, self.decision.value == Decision.CONFIRMED.value)
        self._show_box(self.action_reason, self.action.value == Action.NOT_APPROPRIATE.value)

    @_guarded
    def _on_decision_change(self, _change: Any) -> None:
        if self.decision.value == Decision.CONFIRMED.value and not self.level_rows:
            self._add_row()
        self._set_visibility()
        self.keep_lease()

    @_guarded
    def _on_action_change(self, _change: Any) -> None:
        self._set_visibility()

    def _add_row(self, level: str | None = None, grade: int | None = None,
                 ai_ident: str | None = None) -> None:
        if len(self.level_rows) >= len(LEVELS):
            return
        row = LevelRow(self._remove_row, level, grade, ai_ident)
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
        """Fill the rows with the AI's fractured vertebrae (grade 1-3), named or numbered."""
        if self.record is None or self.is_blind():
            return  # the browser cannot copy what a blind read must not see
        fs = (self.prepared.findings if self.prepared else
              name_findings([_finding(r) for r in self.record.findings]))
        graded = sorted((f for f in fs if f.grade >= 1),
                        key=lambda f: -(f.centre_zyx or (0.0,))[0])
        self.level_rows = []
        self.levels_box.children = ()
        for f in graded:
            level = f.level if f.level in LEVELS else None
            self._add_row(level, int(f.grade), f.ident if level is None else None)
        numbered = [f.ident for f in graded if f.level not in LEVELS]
        if not graded:
            self._add_row()
            self._status("The AI graded no vertebra as fractured: add the ones you see.", "info")
        elif numbered:
            self._status(f"Copied {len(graded)} vertebra(e) from the AI. It numbered "
                         f"{', '.join(numbered)} from the top of the image without naming the "
                         "level: choose each level before saving.", "info")
        else:
            self._status(f"Copied {len(graded)} vertebra(e) from the AI: check each one.", "info")

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
        """Validate and record the form; on success open the next case. Returns the event id.

        A blind read (audit-sample case) is saved as such and the app then offers the AI's
        result before going on.
        """
        if self.case is None:
            self._status("No case is open.", "error")
            return None
        problems = form_problems(self.decision.value, self.level_rows, self.known.value,
                                 self.action.value, self.na_reason.value,
                                 self.action_reason.value)
        if problems:
            self._status("Not saved. Please fix: " + "; ".join(problems), "error")
            return None
        data = self.form_data()
        case = self.case
        blind = (case.key not in self.revealed) if case.stratum == AUDIT_NEGATIVE else None
        try:
            ev = record_decision(self.engine, data, self.reviewer, self.app_version,
                                 supersedes=self.supersedes, blind=blind)
        except ValidationError as e:
            self._status("Not saved. Please fix: " + "; ".join(friendly(p) for p in e.problems),
                         "error")
            return None
        except ConflictError as e:
            self.save_btn.disabled = True
            self._status(f"Not saved: {e}. Press Skip to go on.", "error")
            release_claim(self.engine, case, self.reviewer)
            return None
        release_claim(self.engine, case, self.reviewer)
        self._log(AccessAction.DECISION_SAVED, {
            "event": ev.id, "read": case.read_number, "decision": ev.decision,
            "supersedes": self.supersedes, "blind": blind})
        self.last_saved = (case, ev.id)
        self.correct_btn.disabled = False
        when = ev.recorded_at.strftime("%H:%M:%S")
        word = "Correction saved" if self.supersedes else "Saved"
        if blind and self.supersedes is None:
            self._after_blind_save(ev.id, when)
            return ev.id
        self.open_next()
        # after open_next so the confirmation is what the nurse reads
        prefix = f"{word} (decision #{ev.id}, {when} UTC). "
        self.status.value = (f"<div class='fqi-status-ok'>{esc(prefix)}</div>"
                             + self.status.value)
        return ev.id

    def _after_blind_save(self, event_id: int, when: str) -> None:
        """A blind read is saved: offer the AI's result, or the next case."""
        self._enable_form(False)
        self.supersedes = None
        self._form_saved = True
        self.reveal_note.value = (
            f"<b>Saved as your blind read</b> (decision #{event_id}, {when} UTC). You may now "
            "see the AI's result; your answer stays as the blind read whatever you do next.")
        self._show_box(self.reveal_box, True)
        self._show_box(self.reveal_btn, True)
        self._status(f"Saved (decision #{event_id}, {when} UTC) as your blind read.", "ok")

    @_guarded
    def _on_reveal(self, _b: Any) -> None:
        """Show the AI's result of the case whose blind read was just saved."""
        if self.case is None or self.case.stratum != AUDIT_NEGATIVE or self.last_saved is None \
                or self.last_saved[0].key != self.case.key:
            return  # only after her own blind read of this case is saved
        self._log(AccessAction.AI_SHOWN, {"read": self.case.read_number,
                                          "after_event": self.last_saved[1]})
        self.revealed.add(self.case.key)
        self.overlay.disabled = False
        self.overlay.unobserve(self._on_view_change, names="value")
        self.overlay.value = True
        self.overlay.observe(self._on_view_change, names="value")
        self._show_details()
        self._render()
        self._show_box(self.reveal_btn, False)
        self.reveal_note.value = (
            "<b>The AI's result is shown.</b> To change your decision after seeing it, press "
            "Correct my last decision: the change is kept, and your blind read still counts "
            "for the audit.")
        self._status("The AI's result is shown: overlay, vertebrae and key image.", "info")

    @_guarded
    def _on_after_next(self, _b: Any) -> None:
        self._show_box(self.reveal_box, False)
        self.open_next()

    # ------------------------------------------------------------------ moving on
    def _ask_before(self, action: Callable[[], None]) -> None:
        """Run *action* now, or after the nurse confirms dropping an unsaved decision."""
        if self.case is not None and self.is_dirty():
            self._pending = action
            self._show_box(self.confirm_box, True)
            self._status("This decision is not saved: keep editing, or discard it and go on.",
                         "error")
            return
        action()

    @_guarded
    def _on_discard(self, _b: Any) -> None:
        action, self._pending = self._pending, None
        self._show_box(self.confirm_box, False)
        if action is not None:
            self._clear_form()
            action()

    @_guarded
    def _on_keep(self, _b: Any) -> None:
        self._pending = None
        self._show_box(self.confirm_box, False)
        self._status("Carry on: nothing was dropped.", "info")

    @_guarded
    def _on_skip(self, _b: Any) -> None:
        self._ask_before(self.skip)

    @_guarded
    def _on_next(self, _b: Any) -> None:
        self._ask_before(self.next_case)

    def skip(self) -> None:
        """Give the open case back to the worklist; it comes back after the others."""
        case = self.case
        if case is not None:
            release_claim(self.engine, case, self.reviewer)
            self._later[case.key] = case
        self.open_next()
        if case is not None and self.case is not None:
            self._status_prefix(f"Skipped study {case.study_id}: it is back on the worklist "
                                "for anyone, and comes back to you after the other cases. ")

    def next_case(self) -> None:
        """Go on, keeping the open case held (the lease) until it comes back."""
        case = self.case
        if case is not None:
            self._later[case.key] = case
        self.open_next()
        if case is not None and self.case is not None:
            until = f" until {case.held_until:%H:%M} UTC" if case.held_until else ""
            self._status_prefix(f"Study {case.study_id} stays held for you{until}; it comes "
                                "back after the other cases. ")

    def _status_prefix(self, text: str) -> None:
        self.status.value = f"<div class='fqi-status-ok'>{esc(text)}</div>" + self.status.value

    @_guarded
    def _on_correct(self, _b: Any) -> None:
        self._ask_before(self.correct_last)

    def correct_last(self) -> None:
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
            self._later.setdefault(self.case.key, self.case)
        self._show_box(self.reveal_box, False)
        rec, prep, err = self._load(case)
        self._show_case(case, rec, prep, err, correction=True)
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
        seen = (" You have seen the AI's result: the change is kept, and your blind read "
                "still counts for the audit." if case.key in self.revealed else "")
        self._status(f"Correcting your decision #{latest.id}: change it and save; the "
                     f"original is kept and marked as superseded.{seen}", "info")

    def close(self) -> None:
        """Give back the open case and stop the prefetch thread."""
        if self.case is not None and self.reviewer:
            release_claim(self.engine, self.case, self.reviewer)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _finding(row: dict[str, Any]) -> Any:
    from fracture_qi.adjudication.viewer import Finding

    return Finding.from_row(row)


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
