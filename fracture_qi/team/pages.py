"""The team server's pages: the start page, the two apps, audit records, accounts, health.

Every handler checks the signed-in user's role on the server (:func:`require`) before it does
anything, and a refusal is written to the access log; the browser's word counts for nothing.
Pages other than the two Voila apps are plain server-rendered HTML (no script), escaped,
with forms protected by tornado's XSRF token.

=======================  =========================================  ================
path                     what                                       permission
=======================  =========================================  ================
``/``                    start page: the apps this role may open    signed in
``/app/adjudicate``      the adjudication app (a kernel)            adjudicate
``/app/dashboard``       the QI dashboard (a kernel)                dashboard
``/audit``               audit runs and decision history            audit
``/audit/decisions.csv`` decision history (no free text)            audit
``/access-log.csv``      the access log                             access_log
``/admin``               accounts and server settings               admin
``/healthz``             ``ok`` for the proxy's health check        none (no data)
=======================  =========================================  ================
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from jupyter_server.auth.decorator import allow_unauthenticated
from jupyter_server.base.handlers import JupyterHandler
from sqlalchemy import func, select
from tornado import web
from voila.tornado.handler import TornadoVoilaHandler

from fracture_qi import accounts
from fracture_qi.accesslog import AccessAction, export_access_log, record_access
from fracture_qi.accounts import Permission, Role, allowed
from fracture_qi.errors import AccountError
from fracture_qi.store.schema import AdjudicationEvent, AuditRun
from fracture_qi.team.identity import PAGE_HEADERS, PlainErrors, client_address, signed_in_at
from fracture_qi.team.kernels import LAUNCH, Launch, owns_kernel

#: the apps: path name -> (notebook under fracture_qi/notebooks, permission, title)
APPS: dict[str, tuple[str, Permission, str]] = {
    "adjudicate": ("adjudicate.ipynb", Permission.ADJUDICATE, "Adjudication: your worklist"),
    "dashboard": ("dashboard.ipynb", Permission.DASHBOARD, "QI dashboard (aggregates only)"),
}
#: rows of decision history shown on the audit page (the CSV has them all)
HISTORY_ROWS = 200
#: columns of the decision history (no free text: notes can hold identifiers)
HISTORY_COLUMNS = ["event_id", "recorded_at", "reviewer", "study_id", "read_number",
                   "decision", "max_grade", "previously_known", "action", "supersedes_id",
                   "blind", "simulated", "app_version"]

STYLE = """
body {font-family: system-ui, sans-serif; margin: 0; background: #f0f4f5; color: #231f20;}
header {background: #005eb8; color: white; padding: 10px 20px; display: flex;
        justify-content: space-between; align-items: center;}
header a {color: white;}
main {max-width: 1100px; margin: 16px auto; background: white; padding: 16px 24px;
      border-radius: 8px;}
h1 {font-size: 20px;} h2 {font-size: 17px; margin-top: 22px;}
table {border-collapse: collapse; font-size: 13px;}
td, th {border: 1px solid #d8dde0; padding: 3px 8px; text-align: left;}
.apps a {display: block; font-size: 17px; margin: 10px 0; padding: 12px 16px;
         background: #e8f1fb; border-radius: 6px; text-decoration: none; color: #003087;}
.msg {background: #e6f4ea; padding: 6px 10px; border-radius: 4px;}
.err {background: #fbe9eb; padding: 6px 10px; border-radius: 4px; color: #a40e26;}
form.inline {display: inline; margin-right: 6px;}
.note {color: #425563; font-size: 13px;}
"""


def esc(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def page(handler: web.RequestHandler, title: str, body: str, user: Any = None) -> str:
    """A whole page of the server's own (not an app): header with the user, then *body*."""
    base = handler.settings.get("base_url", "/").rstrip("/")
    who = ""
    if user is not None:
        who = (f"<span>{esc(getattr(user, 'display_name', '') or user.username)} "
               f"({esc(getattr(user, 'role', ''))}, signed in {esc(signed_in_at(user))}) "
               f"&middot; <a href='{base}/'>start</a> &middot; "
               f"<a href='{base}/logout'>sign out</a></span>")
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}: "
            f"Fracture QI</title><style>{STYLE}</style></head><body><header><b>Fracture QI"
            f"</b>{who}</header><main><h1>{esc(title)}</h1>{body}</main></body></html>")


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{esc(r.get(c))}</td>" for c in columns) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>" if rows else "<p class='note'>None yet.</p>"


class TeamPage(PlainErrors, JupyterHandler):  # type: ignore[misc]
    """A server page: security headers, the engine, and role checks with logging."""

    def set_default_headers(self) -> None:
        super().set_default_headers()
        for k, v in PAGE_HEADERS.items():
            self.set_header(k, v)

    @property
    def engine(self) -> Any:
        return self.settings["fqi_engine"]

    def log_access(self, action: AccessAction, detail: Mapping[str, Any] | None = None) -> None:
        user = self.current_user
        record_access(self.engine, username=getattr(user, "username", "(nobody)"),
                      role=getattr(user, "role", None), action=action,
                      client=client_address(self), via="team server", detail=detail)


def require(handler: JupyterHandler, permission: Permission) -> Any:
    """The signed-in user if her role allows *permission*; else log the refusal and 403."""
    user = handler.current_user
    if user is None:
        raise web.HTTPError(403)
    if allowed(getattr(user, "role", None), permission):
        return user
    record_access(handler.settings["fqi_engine"], username=user.username,
                  role=getattr(user, "role", None), action=AccessAction.REFUSED,
                  client=client_address(handler), via="team server",
                  detail={"path": handler.request.path, "needs": permission.value})
    handler.log.warning("refused %s to %s (%s): needs %s", handler.request.path,
                        user.username, getattr(user, "role", None), permission.value)
    raise web.HTTPError(403, reason=f"Your role ({getattr(user, 'role', '')}) may not open "
                                    "this page")


class StartPage(TeamPage):
    """``/``: the apps and pages this user's role may open."""

    @web.authenticated
    def get(self) -> None:
        user = self.current_user
        base = self.base_url.rstrip("/")
        links = [f"<a href='{base}/app/{name}'>{esc(title)}</a>"
                 for name, (_nb, perm, title) in APPS.items() if allowed(user.role, perm)]
        if allowed(user.role, Permission.AUDIT):
            links.append(f"<a href='{base}/audit'>Audit runs and decision history</a>")
        if allowed(user.role, Permission.ACCESS_LOG):
            links.append(f"<a href='{base}/access-log.csv'>Download the access log (CSV, for "
                         "the Caldicott guardian)</a>")
        if allowed(user.role, Permission.ADMIN):
            links.append(f"<a href='{base}/admin'>Accounts and server settings</a>")
        body = ("<div class='apps'>" + "".join(links) + "</div><p class='note'>Each app page "
                "runs for you alone. Every case you open and every decision you save is "
                "recorded under your name. Sign out when you leave a shared computer.</p>")
        self.finish(page(self, "Start", body, user))


class HealthPage(PlainErrors, JupyterHandler):  # type: ignore[misc]
    """``/healthz``: ``ok`` (for the proxy's health check); starts nothing, reads nothing."""

    @allow_unauthenticated
    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish("ok\n")

    @allow_unauthenticated
    def head(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish()


class AppPage(TornadoVoilaHandler):  # type: ignore[misc]
    """``/app/NAME``: an app, rendered by Voila in a kernel of the signed-in user's own."""

    @web.authenticated
    async def get(self, name: str) -> None:  # type: ignore[override]
        if name not in APPS:
            raise web.HTTPError(404)
        notebook, permission, title = APPS[name]
        user = require(self, permission)
        record_access(self.settings["fqi_engine"], username=user.username, role=user.role,
                      action=AccessAction.PAGE_OPENED, client=client_address(self),
                      via="team server", detail={"app": name})
        token = LAUNCH.set(Launch(user.username, user.role, client_address(self), name))
        try:
            await super().get(path=notebook)
        finally:
            LAUNCH.reset(token)


class ShutdownKernelPage(PlainErrors, JupyterHandler):  # type: ignore[misc]
    """``/voila/api/shutdown/ID`` (a tab closing): only the kernel's owner may end it."""

    @web.authenticated
    async def post(self, kernel_id: str) -> None:
        self.kernel_id = kernel_id
        if not owns_kernel(self, self.current_user):
            raise web.HTTPError(403)
        await self.kernel_manager.shutdown_kernel(kernel_id)
        self.set_status(204)
        self.finish()


def audit_runs(engine: Any) -> list[dict[str, Any]]:
    """Audit runs, newest first (no parameters: they can name sites and periods only)."""
    cols = [AuditRun.id, AuditRun.name, AuditRun.started_at, AuditRun.finished_at,
            AuditRun.status, AuditRun.published, AuditRun.code_version, AuditRun.out_dir,
            AuditRun.provenance_sha256]
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(*cols).order_by(AuditRun.id.desc()))
                .mappings()]


def decision_history(engine: Any, limit: int | None = None) -> list[dict[str, Any]]:
    """Decision events, newest first, pseudonymous and without free text."""
    e = AdjudicationEvent
    q = select(e.id.label("event_id"), e.recorded_at, e.reviewer, e.study_id, e.read_number,
               e.decision, e.levels, e.previously_known, e.action, e.supersedes_id, e.blind,
               e.simulated, e.app_version).order_by(e.id.desc())
    if limit:
        q = q.limit(limit)
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(q).mappings()]
    for r in rows:
        levels = r.pop("levels") or []
        r["max_grade"] = max((int(x.get("grade", 0)) for x in levels if isinstance(x, dict)),
                             default=0)
    return rows


class AuditPage(TeamPage):
    """``/audit``: audit runs and decision history, read-only."""

    @web.authenticated
    def get(self) -> None:
        user = require(self, Permission.AUDIT)
        self.log_access(AccessAction.PAGE_OPENED, {"page": "audit"})
        base = self.base_url.rstrip("/")
        with self.engine.connect() as conn:
            n_events = conn.scalar(select(func.count()).select_from(AdjudicationEvent)) or 0
        runs = audit_runs(self.engine)
        body = (
            "<h2>Audit runs</h2>"
            + table(runs, ["id", "name", "started_at", "finished_at", "status", "published",
                           "code_version", "provenance_sha256", "out_dir"])
            + "<p class='note'>Rerun and compare any run with <code>fracture-qi audit "
              "--verify OUT_DIR</code> on the server.</p>"
            + f"<h2>Decision history ({n_events} events; the newest {HISTORY_ROWS} shown)</h2>"
            + f"<p><a href='{base}/audit/decisions.csv'>Download the whole history (CSV)</a>"
              "</p><p class='note'>Events are never changed: a correction is a new event that "
              "supersedes the old one; <i>blind</i> marks reads made without the AI's result. "
              "Notes and reasons (free text) are left out here.</p>"
            + table(decision_history(self.engine, HISTORY_ROWS), HISTORY_COLUMNS))
        self.finish(page(self, "Audit runs and decision history", body, user))


def _csv_response(handler: web.RequestHandler, name: str, text: str) -> None:
    handler.set_header("Content-Type", "text/csv; charset=utf-8")
    handler.set_header("Content-Disposition", f"attachment; filename=\"{name}\"")
    handler.finish(text)


class DecisionsCsv(TeamPage):
    """``/audit/decisions.csv``: the decision history, logged as an export."""

    @web.authenticated
    def get(self) -> None:
        import pandas as pd

        from fracture_qi.csvsafe import frame_to_csv

        require(self, Permission.AUDIT)
        rows = decision_history(self.engine)
        self.log_access(AccessAction.EXPORT, {"what": "decision history", "rows": len(rows)})
        df = pd.DataFrame(list(reversed(rows)), columns=HISTORY_COLUMNS)
        _csv_response(self, "decision-history.csv", frame_to_csv(df, index=False))


class AccessLogCsv(TeamPage):
    """``/access-log.csv``: the access log (the export itself is logged first)."""

    @web.authenticated
    def get(self) -> None:
        import tempfile
        from pathlib import Path

        user = require(self, Permission.ACCESS_LOG)
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "access-log.csv"
            export_access_log(self.engine, out, by=user.username, role=user.role,
                              client=client_address(self), via="team server")
            text = out.read_text(encoding="utf-8")
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M")
        _csv_response(self, f"fracture-qi-access-log-{stamp}.csv", text)


class AdminPage(TeamPage):
    """``/admin``: accounts (create, disable, enable, role, password) and the settings."""

    @web.authenticated
    def get(self) -> None:
        user = require(self, Permission.ADMIN)
        self.finish(page(self, "Accounts and server settings", self._body(), user))

    @web.authenticated
    def post(self) -> None:
        user = require(self, Permission.ADMIN)
        action = self.get_argument("action", "")
        name = self.get_argument("username", "")
        kw = {"by": user.username, "client": client_address(self), "via": "team server"}
        try:
            if action == "create":
                password = self.get_argument("password", "") or None
                a = accounts.add_user(self.engine, name, self.get_argument("role", ""),
                                      password, display_name=self.get_argument("display_name",
                                                                               None), **kw)
                msg = f"account {a.username} created ({a.role})"
            elif action in ("disable", "enable"):
                if accounts.clean_username(name) == user.username and action == "disable":
                    raise AccountError("you cannot disable your own account")
                a = accounts.set_active(self.engine, name, action == "enable", **kw)
                msg = f"account {a.username} {action}d"
            elif action == "set_role":
                if accounts.clean_username(name) == user.username:
                    raise AccountError("you cannot change your own role; ask another admin")
                a = accounts.set_role(self.engine, name, self.get_argument("role", ""), **kw)
                msg = f"account {a.username} is now {a.role}"
            elif action == "set_password":
                a = accounts.set_password(self.engine, name, self.get_argument("password", ""),
                                          **kw)
                msg = f"account {a.username} has a new password; its sessions have ended"
            else:
                raise AccountError(f"unknown action {action!r}")
            self.redirect(f"{self.base_url.rstrip('/')}/admin?msg={quote(msg)}")
        except AccountError as e:
            self.set_status(400)
            self.finish(page(self, "Accounts and server settings",
                             self._body(error=str(e)), user))

    def _form(self, action: str, fields: str, label: str, username: str = "") -> str:
        hidden = f"<input type='hidden' name='username' value='{esc(username)}'>" if username \
            else ""
        return (f"<form class='inline' method='post' action='{self.base_url.rstrip('/')}/admin'>"
                f"{self.xsrf_form_html()}<input type='hidden' name='action' value='{action}'>"
                f"{hidden}{fields}<button type='submit'>{esc(label)}</button></form>")

    def _body(self, error: str = "") -> str:
        roles = "".join(f"<option value='{r.value}'>{r.value}</option>" for r in Role)
        msg = self.get_argument("msg", "")
        head = (f"<p class='err'>{esc(error)}</p>" if error else
                f"<p class='msg'>{esc(msg)}</p>" if msg else "")
        rows = []
        for a in accounts.list_accounts(self.engine):
            actions = (self._form("enable" if not a.active else "disable", "",
                                  "Enable" if not a.active else "Disable", a.username)
                       + self._form("set_role", f"<select name='role'>{roles}</select>",
                                    "Set role", a.username)
                       + self._form("set_password", "<input type='password' name='password' "
                                    "placeholder='new password' autocomplete='new-password'>",
                                    "Set password", a.username))
            rows.append(f"<tr><td>{esc(a.username)}</td><td>{esc(a.display_name)}</td>"
                        f"<td>{esc(a.role)}</td><td>{'active' if a.active else 'DISABLED'}</td>"
                        f"<td>{'password' if a.has_password else 'sign-on'}</td>"
                        f"<td>{actions}</td></tr>")
        create = self._form(
            "create",
            "<input type='text' name='username' placeholder='user name' required> "
            "<input type='text' name='display_name' placeholder='display name'> "
            f"<select name='role'>{roles}</select> "
            "<input type='password' name='password' placeholder='password (empty: sign-on)' "
            "autocomplete='new-password'> ", "Create account")
        return (head + "<h2>Accounts</h2><table><tr><th>user</th><th>name</th><th>role</th>"
                "<th>state</th><th>sign-in</th><th></th></tr>" + "".join(rows) + "</table>"
                f"<h2>New account</h2>{create}<p class='note'>Passwords: at least "
                f"{accounts.MIN_PASSWORD_LENGTH} characters (three random words work well). "
                "Every change is in the access log.</p>" + self._settings_html())

    def _settings_html(self) -> str:
        app = self.settings.get("fqi_team")
        km = self.kernel_manager
        rows = [
            ("manifest", getattr(app, "manifest_path", "")),
            ("database", getattr(app, "database_label", "")),
            ("kernels open now", len(km.list_kernel_ids())),
            ("most kernels in all (--max-kernels)", getattr(km, "max_kernels", "")),
            ("most kernels per user (--max-kernels-per-user)",
             getattr(km, "max_kernels_per_user", "")),
            ("idle kernels shut down after (s)", getattr(km, "cull_idle_timeout", "")),
            ("sign-in", "hospital sign-on by header " + self.identity_provider.sign_on_header
             if self.identity_provider.sign_on_header else "local accounts (argon2id)"),
            ("sessions last (h)", self.identity_provider.session_hours),
            ("behind a TLS reverse proxy", getattr(app, "behind_proxy", "")),
        ]
        body = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in rows)
        return ("<h2>Server settings</h2><table>" + body + "</table><p class='note'>Settings "
                "are the options of <code>fracture-qi serve</code>: change them there and "
                "restart the server (docs/team-server.md).</p>")


def handlers(voila_configuration: Any, template_paths: Any, config: Any) -> list[tuple[Any, ...]]:
    """The server's own routes (placed before Voila's)."""
    conf = {"voila_configuration": voila_configuration, "template_paths": template_paths,
            "config": config}
    return [
        (r"/", StartPage),
        (r"/healthz", HealthPage),
        (r"/app/([a-z]+)/?", AppPage, conf),
        (r"/audit/?", AuditPage),
        (r"/audit/decisions\.csv", DecisionsCsv),
        (r"/access-log\.csv", AccessLogCsv),
        (r"/admin/?", AdminPage),
        (r"/voila/api/shutdown/(.*)", ShutdownKernelPage),
    ]


__all__ = ["APPS", "audit_runs", "decision_history", "handlers", "require"]
