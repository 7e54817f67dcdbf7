"""The team server process: ``python -m fracture_qi.team.server NOTEBOOKS_DIR [options]``.

Voila in directory mode (one kernel per page, per user) with everything
:mod:`fracture_qi.voila_guard` gives a single app (bounded websocket frames, scrubbed errors,
a kernel cap), and with:

* sign-in by :class:`~.identity.TeamIdentityProvider` (``Voila.identity_provider_class``);
* kernels owned by the user they were started for (:class:`~.kernels.TeamKernelManager`),
  a per-user cap, and :class:`~.kernels.TeamAuthorizer` (``Voila.authorizer_class``)
  letting only the owner reach a kernel;
* Voila's directory listing, its ``/voila/render/`` of any notebook, its contents API and
  files removed: only the two apps are served, at ``/app/adjudicate`` and
  ``/app/dashboard``, each behind its role (:mod:`.pages`);
* with ``--TeamVoila.behind_proxy=True``, the reverse proxy's ``X-Forwarded-For`` and
  ``X-Forwarded-Proto`` are believed (the browser's address for the access log; secure
  cookies under TLS). The server then must be reachable by the proxy only (127.0.0.1).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from jupyter_server.utils import url_path_join
from traitlets import Bool
from voila.app import Voila

from fracture_qi.serve import ENV_MANIFEST, ENV_PARENT_PID, ENV_TOKEN
from fracture_qi.team import pages
from fracture_qi.team.identity import TeamIdentityProvider
from fracture_qi.team.kernels import TeamAuthorizer, TeamKernelManager
from fracture_qi.voila_guard import (
    patch_voila_write_message,
    harden_static_handlers,
    voila_config,
    watch_parent,
)

#: Voila handlers the team server does not serve: the directory listing, the rendering of
#: any notebook by path, the contents API, and the files of the notebooks folder
DROPPED_PATTERNS = ("/voila/tree", "/voila/render/", "/voila/api/contents", "/voila/files/",
                    "/voila/api/shutdown/")


class TeamVoila(Voila):  # type: ignore[misc]
    """Voila serving the suite's two apps to signed-in users (see the module docstring)."""

    name = "fracture-qi-serve"
    behind_proxy = Bool(False, config=True,
                        help="Believe X-Forwarded-For/-Proto from the TLS reverse proxy.")

    def init_settings(self) -> dict[str, Any]:
        from fracture_qi.manifest import read_manifest
        from fracture_qi.store import open_store

        settings = super().init_settings()
        manifest = os.environ.get(ENV_MANIFEST, "")
        m = read_manifest(manifest, verify=False)
        self.engine = open_store(m)
        self.manifest_path = str(m.path)
        self.database_label = self.engine.url.render_as_string(hide_password=True)
        settings["fqi_engine"] = self.engine
        settings["fqi_team"] = self
        # jupyter_server's error pages (a refused websocket, a 403 from its API handlers)
        # link its static files; Voila's standalone app serves them under /voila/static/
        # but does not say so, and the error page itself then failed with a traceback
        from jupyter_server import DEFAULT_STATIC_FILES_PATH
        from jupyter_server.utils import url_path_join as join

        settings.setdefault("static_path", DEFAULT_STATIC_FILES_PATH)
        settings.setdefault("static_url_prefix", join(self.base_url, "voila", "static") + "/")
        return settings

    def init_handlers(self) -> list[Any]:
        voila = [h for h in super().init_handlers()
                 if not any(p in str(h[0]) for p in DROPPED_PATTERNS)
                 and str(h[0]).rstrip("/") != self.server_url.rstrip("/")]
        own = [(url_path_join(self.server_url, h[0]), *h[1:])
               for h in pages.handlers(self.voila_configuration, self.template_paths,
                                       self.config)]
        return own + voila

    def start(self) -> None:
        """Voila's start, listening with ``xheaders`` behind the proxy."""
        if self.behind_proxy:
            import functools

            import tornado.web

            listen = tornado.web.Application.listen
            tornado.web.Application.listen = functools.partialmethod(  # type: ignore[method-assign]
                listen, xheaders=True)
        super().start()


def team_config() -> Any:
    """The in-memory configuration: the guard's, with the team's identity, authoriser and
    kernel manager."""
    c = voila_config(None)
    c.Voila.identity_provider_class = TeamIdentityProvider
    c.Voila.authorizer_class = TeamAuthorizer
    c.VoilaConfiguration.multi_kernel_manager_class = TeamKernelManager
    # the dashboard is served in publication mode: aggregates, small numbers suppressed
    c.Voila.tornado_settings = {"headers": {"Referrer-Policy": "same-origin",
                                            "X-Frame-Options": "SAMEORIGIN"}}
    return c


def launch(argv: Sequence[str]) -> None:
    """Run the team server with *argv* (Voila's options and the team's)."""
    os.environ.pop(ENV_TOKEN, None)  # the team server signs users in; no shared token
    parent = os.environ.pop(ENV_PARENT_PID, "")
    if parent.isdigit():
        watch_parent(int(parent))
    if not os.environ.get(ENV_MANIFEST):
        raise SystemExit(f"fracture-qi serve: ${ENV_MANIFEST} is not set")
    harden_static_handlers()
    patch_voila_write_message()
    sys.argv = ["fracture-qi-serve", *argv]
    TeamVoila.launch_instance(argv=list(argv), config=team_config())


if __name__ == "__main__":
    launch(sys.argv[1:])
