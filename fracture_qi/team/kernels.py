"""Whose kernel is whose: per-user limits, the signed-in user in the kernel, and the check that
nobody reaches another's kernel.

Each page of an app is a kernel that holds that user's session (for a nurse, patients'
details). :class:`TeamKernelManager` starts kernels only for a page the server opened for a
signed-in user with the right role (:data:`LAUNCH`, set by :class:`~.pages.AppPage` for the
one request), gives the kernel that user's name, role and address (the app records them),
remembers the owner, and holds each user to ``max_kernels_per_user`` (the whole server to
``max_kernels``, :class:`~fracture_qi.voila_guard.CappedKernelManager`).
:class:`TeamAuthorizer` (jupyter_server's ``Authorizer`` extension point) lets a websocket
or a kernel API request through only for the kernel's owner, whatever the browser sends.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any

from jupyter_server.auth.authorizer import Authorizer
from tornado import web
from traitlets import Integer

from fracture_qi.serve import ENV_CLIENT, ENV_REVIEWER, ENV_ROLE, ENV_VIA
from fracture_qi.voila_guard import CappedKernelManager, last_activity

#: the 503 reason line (shown on the page) when a user holds her limit of pages
USER_BUSY_REASON = ("You have too many app pages open: close the ones you no longer use "
                    "(or wait a minute) and reload")


@dataclass(frozen=True)
class Launch:
    """Who a kernel is being started for (one request of :class:`~.pages.AppPage`)."""

    username: str
    role: str
    client: str
    app: str


#: set by :class:`~.pages.AppPage` around Voila's rendering of one page; the kernel manager
#: starts a kernel only when it is set (a kernel is never started for anyone else)
LAUNCH: contextvars.ContextVar[Launch | None] = contextvars.ContextVar("fqi_launch",
                                                                      default=None)


class TeamKernelManager(CappedKernelManager):  # type: ignore[misc]
    """Kernels for signed-in users only, at most ``max_kernels_per_user`` each."""

    max_kernels_per_user = Integer(
        3, config=True,
        help="Most kernels (open app pages) one user may hold; past it her pages no browser "
             "is connected to are shut down, else the page load is answered 503.")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._fqi_owner: dict[str, Launch] = {}
        self._fqi_user_starting: dict[str, int] = {}

    def owner(self, kernel_id: str) -> Launch | None:
        """Who the kernel was started for (``None``: unknown or gone)."""
        if kernel_id not in self:
            return None
        return self._fqi_owner.get(kernel_id)

    def kernels_of(self, username: str) -> list[str]:
        """The user's kernels alive now."""
        alive = set(self.list_kernel_ids())
        return [k for k, o in self._fqi_owner.items() if o.username == username and k in alive]

    async def _async_start_kernel(self, *, kernel_id: str | None = None, **kwargs: Any) -> str:
        if kernel_id is not None and kernel_id in self:
            return await super()._async_start_kernel(kernel_id=kernel_id, **kwargs)
        launch = LAUNCH.get()
        if launch is None:
            self.log.warning("refused to start a kernel outside a signed-in page load")
            raise web.HTTPError(403, reason="Sign in first")
        user = launch.username
        if len(self.kernels_of(user)) + self._fqi_user_starting.get(user, 0) \
                >= self.max_kernels_per_user:
            await self._reclaim_users(user)
        held = len(self.kernels_of(user)) + self._fqi_user_starting.get(user, 0)
        if held >= self.max_kernels_per_user:
            self.log.warning("refused a kernel to %s: %d pages open, the limit per user "
                             "(--max-kernels-per-user)", user, held)
            raise web.HTTPError(503, reason=USER_BUSY_REASON)
        env = kwargs.get("env")
        if isinstance(env, dict):
            # the app reads who it serves from here: the signed-in user, never the browser
            env.update({ENV_REVIEWER: user, ENV_ROLE: launch.role, ENV_CLIENT: launch.client,
                        ENV_VIA: "team server"})
        self._fqi_user_starting[user] = self._fqi_user_starting.get(user, 0) + 1
        try:
            kid = await super()._async_start_kernel(kernel_id=kernel_id, **kwargs)
        finally:
            self._fqi_user_starting[user] -= 1
        self._fqi_owner[kid] = launch
        self.log.info("kernel %s started for %s (%s, %s)", kid, user, launch.role, launch.app)
        return kid

    start_kernel = _async_start_kernel  # type: ignore[assignment]

    async def _reclaim_users(self, username: str) -> None:
        """Shut down the user's own pages that no browser is connected to (closed tabs,
        reloads), oldest activity first, until she is under her limit."""
        mine = []
        for kid in self.kernels_of(username):
            try:
                kernel = self.get_kernel(kid)
            except KeyError:
                continue
            seen = last_activity(kernel)
            if seen is not None and self._kernel_connections.get(kid, 0) == 0 and \
                    getattr(kernel, "execution_state", "") != "busy":
                mine.append((seen, kid))
        for _, kid in sorted(mine):
            if len(self.kernels_of(username)) < self.max_kernels_per_user:
                return
            self.log.info("user %s at her page limit: shutting down her kernel %s (no browser "
                          "connected)", username, kid)
            await self.shutdown_kernel(kid)

    async def _async_shutdown_kernel(self, kernel_id: str, now: bool = False,
                                     restart: bool = False) -> None:
        await super()._async_shutdown_kernel(kernel_id, now=now, restart=restart)
        if not restart:
            self._fqi_owner.pop(kernel_id, None)

    shutdown_kernel = _async_shutdown_kernel  # type: ignore[assignment]


def kernel_id_of(handler: web.RequestHandler) -> str | None:
    """The kernel a request is about (the websocket handler's, or the URL's)."""
    kid = getattr(handler, "kernel_id", None)
    if kid:
        return str(kid)
    args = list(getattr(handler, "path_args", None) or [])
    kwargs = getattr(handler, "path_kwargs", None) or {}
    kid = kwargs.get("kernel_id") or (args[0] if args else None)
    return str(kid) if kid else None


def owns_kernel(handler: web.RequestHandler, user: Any) -> bool:
    """Whether *user* is the one the request's kernel was started for."""
    km = handler.settings.get("kernel_manager")
    kid = kernel_id_of(handler)
    if user is None or km is None or kid is None or not hasattr(km, "owner"):
        return False
    owner = km.owner(kid)
    return owner is not None and owner.username == getattr(user, "username", None)


class TeamAuthorizer(Authorizer):  # type: ignore[misc]
    """jupyter_server's authorisation hook: a kernel is its owner's only.

    Consulted by the kernel websocket and the kernel REST handlers that Voila serves; every
    other resource of the Jupyter API (contents, sessions, terminals...) is not served by
    this server at all, and refused here too.
    """

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        if resource == "kernels" and owns_kernel(handler, user):
            return True
        handler.log.warning("refused %s %s on %s for %s", handler.request.method,
                            handler.request.path, resource, getattr(user, "username", None))
        return False


__all__ = [
    "LAUNCH",
    "USER_BUSY_REASON",
    "Launch",
    "TeamAuthorizer",
    "TeamKernelManager",
    "kernel_id_of",
    "owns_kernel",
]
