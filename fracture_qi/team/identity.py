"""Sign-in for the team server, through jupyter_server's own extension point.

:class:`TeamIdentityProvider` is a ``jupyter_server.auth.IdentityProvider`` (configured as
``Voila.identity_provider_class``): every request, Voila's own included, is attributed to a
user by it, and jupyter_server sends any request without one to the sign-in page (pages) or
refuses it (API, websockets) before it reaches a kernel.

* **Local accounts** (the default): an ordinary HTML form posts a user name and a password;
  :func:`fracture_qi.accounts.authenticate` checks them (argon2id) and the provider sets a
  signed, HTTP-only, SameSite cookie (tornado's secure cookie, keyed by the server's random
  cookie secret) holding the user name and the time of sign-in. Each request then checks the
  account again: disabled, given a new role or password since, or signed in more than
  ``session_hours`` ago, and the session is over.
* **The hospital's sign-on** (``--sign-on-header X-Forwarded-User``): a reverse proxy on
  this machine signs users in (OIDC/SAML/Kerberos through the trust's identity provider,
  e.g. oauth2-proxy or Apache mod_auth_openidc) and sends the user name in a header; the
  user must have an account here (it carries the role). The server then listens on
  127.0.0.1 only, so nothing but the proxy can set that header.

Every sign-in, failed sign-in and sign-out is written to the access log.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import time
from dataclasses import dataclass
from typing import Any

from jupyter_server.auth.decorator import allow_unauthenticated
from jupyter_server.auth.identity import IdentityProvider, User
from jupyter_server.auth.login import LoginFormHandler
from jupyter_server.auth.logout import LogoutHandler
from tornado import web
from traitlets import Dict, Float, Unicode

from fracture_qi.accesslog import AccessAction, record_access
from fracture_qi.accounts import Account, authenticate, get_account
from fracture_qi.errors import SignInError

#: the login cookie's name (one server per host and port; the name says which app)
COOKIE_NAME = "fracture-qi-session"


@dataclass
class TeamUser(User):  # type: ignore[misc]
    """A signed-in user: jupyter_server's :class:`User` with the role and time of sign-in."""

    role: str = ""
    signed_in_at: float = 0.0


def _user(account: Account, signed_in_at: float) -> TeamUser:
    return TeamUser(username=account.username, name=account.label,
                    display_name=account.label, role=account.role, signed_in_at=signed_in_at)


def client_address(handler: web.RequestHandler) -> str:
    """The browser's address as the server sees it (the proxy passes it on with
    ``--behind-proxy``)."""
    return str(handler.request.remote_ip or "")[:100]


class TeamIdentityProvider(IdentityProvider):  # type: ignore[misc]
    """Users of ``fracture-qi serve``: local accounts, or the hospital's sign-on by header."""

    session_hours = Float(12.0, config=True, help="Hours a sign-in lasts.")
    sign_on_header = Unicode(
        "", config=True,
        help="Header in which the reverse proxy (the hospital's sign-on) gives the user name; "
             "empty: sign in with a local account's password.")
    cookie_options = Dict({"samesite": "Lax"}, config=True,
                          help="Extra options of the login cookie (tornado set_cookie).")

    @property
    def auth_enabled(self) -> bool:
        return True

    @property
    def login_available(self) -> bool:
        return not self.sign_on_header

    def get_handlers(self) -> list[tuple[str, object]]:
        """The sign-in form and the sign-out page (Voila would give its token page)."""
        handlers: list[tuple[str, object]] = [(r"/logout", TeamLogoutHandler)]
        if self.login_available:
            handlers.append((r"/login", TeamLoginHandler))
        return handlers

    def get_cookie_name(self, handler: web.RequestHandler) -> str:
        return COOKIE_NAME

    # -- the cookie holds who and when; the account is checked on every request ----------
    def user_to_cookie(self, user: User) -> str:
        return json.dumps({"u": user.username,
                           "t": float(getattr(user, "signed_in_at", 0.0) or time.time())})

    def user_from_cookie(self, cookie_value: str) -> User | None:  # pragma: no cover - unused
        data = json.loads(cookie_value)
        return User(str(data["u"]))

    def _engine(self, handler: web.RequestHandler) -> Any:
        return handler.settings["fqi_engine"]

    async def get_user(self, handler: web.RequestHandler) -> TeamUser | None:
        """The signed-in user of *handler*'s request, or ``None``."""
        cached = getattr(handler, "_fqi_user", False)
        if cached is not False:
            return cached  # type: ignore[no-any-return]
        user = self._header_user(handler) if self.sign_on_header else self._cookie_user(handler)
        handler._fqi_user = user  # type: ignore[attr-defined]
        return user

    def _header_user(self, handler: web.RequestHandler) -> TeamUser | None:
        name = (handler.request.headers.get(self.sign_on_header) or "").strip()
        if not name:
            return None
        account = get_account(self._engine(handler), name)
        if account is None or not account.active:
            self.log.warning("sign-on user %r has no active account here", name[:100])
            return None
        return _user(account, time.time())

    def _cookie_user(self, handler: web.RequestHandler) -> TeamUser | None:
        raw = handler.get_secure_cookie(COOKIE_NAME, max_age_days=self.session_hours / 24 + 0.01)
        if not raw:
            return None
        try:
            data = json.loads(raw)
            name, signed_in = str(data["u"]), float(data["t"])
        except (ValueError, KeyError, TypeError):
            return None
        if time.time() - signed_in > self.session_hours * 3600:
            return None
        account = get_account(self._engine(handler), name)
        if account is None or not account.active:
            return None
        valid_after = account.sessions_valid_after
        if valid_after is not None and signed_in <= valid_after.timestamp():
            return None  # disabled, new password or new role since this sign-in
        return _user(account, signed_in)

    def process_login_form(self, handler: web.RequestHandler) -> TeamUser | None:
        """Check the form's user name and password; log the attempt either way."""
        engine = self._engine(handler)
        name = handler.get_argument("username", default="").strip()[:100]
        password = handler.get_argument("password", default="")
        client = client_address(handler)
        try:
            account = authenticate(engine, name, password, client=client)
        except SignInError as e:
            record_access(engine, username=name.lower() or "(empty)",
                          action=AccessAction.SIGN_IN_FAILED, client=client, via="team server",
                          detail={"reason": e.reason})
            handler._fqi_signin_error = str(e)  # type: ignore[attr-defined]
            return None
        record_access(engine, username=account.username, role=account.role,
                      action=AccessAction.SIGN_IN, client=client, via="team server")
        return _user(account, time.time())


#: the sign-in page: an ordinary form with one text input and one password input
LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in: Fracture QI</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{font-family: system-ui, sans-serif; background: #f0f4f5; margin: 0;}}
main {{max-width: 360px; margin: 12vh auto; background: white; padding: 24px 28px;
       border-radius: 8px; box-shadow: 0 1px 4px rgba(0,0,0,.15);}}
h1 {{font-size: 20px; margin: 0 0 4px 0; color: #005eb8;}}
label {{display: block; margin-top: 12px; font-weight: 600;}}
input[type=text], input[type=password] {{width: 100%; box-sizing: border-box; padding: 8px;
       font-size: 15px; border: 1px solid #8a9ba8; border-radius: 4px;}}
button {{margin-top: 18px; width: 100%; padding: 10px; font-size: 15px; background: #007f3b;
        color: white; border: 0; border-radius: 4px; cursor: pointer;}}
.error {{color: #a40e26; font-weight: 600; margin-top: 10px;}}
.note {{color: #425563; font-size: 13px; margin-top: 14px;}}
</style></head><body><main>
<h1>Fracture QI</h1><div>Sign in to the FLS team server</div>
{message}
<form method="post" action="{action}" autocomplete="on">
{xsrf}
<label for="username">User name</label>
<input type="text" id="username" name="username" autocomplete="username" required autofocus>
<label for="password">Password</label>
<input type="password" id="password" name="password" autocomplete="current-password" required>
<button type="submit">Sign in</button>
</form>
<div class="note">Patient data: use your own account only. Every case you open is recorded.</div>
</main></body></html>
"""

SIGNED_OUT_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Signed out: Fracture QI</title></head>
<body style="font-family: system-ui, sans-serif; margin: 12vh auto; max-width: 360px">
<h1 style="font-size: 20px; color: #005eb8">Signed out</h1>
<p>{message}</p><p><a href="{login}">Sign in again</a></p></body></html>
"""

#: security headers of the server's own pages (no script; forms post to this server only)
PAGE_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; style-src 'self' 'unsafe-inline'; "
                                "script-src 'none'; frame-ancestors 'none'; form-action 'self'"),
    "X-Frame-Options": "DENY",
    # not no-referrer: Chromium then sends "Origin: null" with a form post, which
    # jupyter_server's cross-site check (rightly) refuses
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

ERROR_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{code}: Fracture QI</title></head>
<body style="font-family: system-ui, sans-serif; margin: 12vh auto; max-width: 480px">
<h1 style="font-size: 20px; color: #a40e26">{title}</h1><p>{text}</p>
<p><a href="{start}">Back to the start page</a></p></body></html>
"""


class PlainErrors:
    """Error pages of the server's own handlers: a plain page, nothing from the request but
    the reason this server gave (jupyter_server's templates need files Voila does not serve).
    """

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        reason = getattr(kwargs.get("exc_info", (None, None))[1], "reason", None)
        text = {403: "You may not open this page with your role.",
                404: "There is no such page."}.get(status_code, "The server could not do that.")
        self.set_header("Content-Type", "text/html; charset=UTF-8")  # type: ignore[attr-defined]
        start = self.settings.get("base_url", "/")  # type: ignore[attr-defined]
        self.finish(ERROR_PAGE.format(  # type: ignore[attr-defined]
            code=status_code, title=html.escape(reason or self._reason),  # type: ignore[attr-defined]
            text=html.escape(text), start=html.escape(start)))


class TeamLoginHandler(PlainErrors, LoginFormHandler):  # type: ignore[misc]
    """The sign-in form (GET) and its check (POST, with tornado's XSRF token)."""

    def _render(self, message: Any = None) -> None:
        for k, v in PAGE_HEADERS.items():
            self.set_header(k, v)
        error = ""
        if message:
            text = getattr(self, "_fqi_signin_error", "") or "Sign-in failed."
            error = f"<div class='error' role='alert'>{html.escape(text)}</div>"
        next_url = self.get_argument("next", default=self.base_url)
        action = self.base_url.rstrip("/") + "/login?next=" + web.escape.url_escape(next_url)
        self.write(LOGIN_PAGE.format(message=error, action=html.escape(action),
                                     xsrf=self.xsrf_form_html()))


class TeamLogoutHandler(PlainErrors, LogoutHandler):  # type: ignore[misc]
    """Sign out: the access log records it, the cookie is cleared."""

    @allow_unauthenticated
    async def get(self) -> None:
        user = self.current_user
        if user is not None:
            record_access(self.settings["fqi_engine"], username=user.username,
                          role=getattr(user, "role", None), action=AccessAction.SIGN_OUT,
                          client=client_address(self), via="team server")
        self.identity_provider.clear_login_cookie(self)
        for k, v in PAGE_HEADERS.items():
            self.set_header(k, v)
        login = self.base_url.rstrip("/") + "/login"
        msg = ("You are signed out. Close the browser on a shared computer."
               if self.identity_provider.login_available else
               "Sign out of the hospital's sign-on too to end your session there.")
        self.write(SIGNED_OUT_PAGE.format(message=html.escape(msg), login=html.escape(login)))


def signed_in_at(user: Any) -> str:
    """When *user* signed in, for pages (UTC)."""
    t = getattr(user, "signed_in_at", 0.0) or 0.0
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%H:%M UTC") if t else ""


__all__ = [
    "COOKIE_NAME",
    "PAGE_HEADERS",
    "PlainErrors",
    "TeamIdentityProvider",
    "TeamLoginHandler",
    "TeamLogoutHandler",
    "TeamUser",
    "client_address",
]
