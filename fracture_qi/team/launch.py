"""Start and supervise the team server (runs in the ``fracture-qi`` process; imports no Voila).

The server process is ``python -m fracture_qi.team.server NOTEBOOKS_DIR [options]``; its
settings travel as options on its command line (no secret among them) and the manifest path
in the environment, as for :mod:`fracture_qi.serve`.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fracture_qi.errors import ConfigError
from fracture_qi.serve import (
    DEFAULT_CULL_INTERVAL_S,
    DEFAULT_CULL_IDLE_TIMEOUT_S,
    ENV_AUDIT,
    ENV_MANIFEST,
    ENV_PARENT_PID,
    KERNEL_TRANSPORT_ARGS,
    is_loopback,
    server_env,
)

log = logging.getLogger(__name__)

#: the port ``fracture-qi serve`` uses when none is given
DEFAULT_TEAM_PORT = 8870
#: kernels (open app pages) the whole server runs at once: a page of the adjudication app
#: holds about 200 MB, the dashboard's 120-170 MB, so 16 stay under about 3.5 GB: 8 nurses
#: and 5 dashboard viewers at once (the load test in benchmarks/) with room for reloads
DEFAULT_TEAM_MAX_KERNELS = 16
#: kernels one user may hold: two app tabs and a reload; past it her own abandoned pages
#: are shut down first, else she is asked to close one
DEFAULT_MAX_KERNELS_PER_USER = 3
#: hours a sign-in lasts (a clinical shift and a half), whatever the browser keeps
DEFAULT_SESSION_HOURS = 12.0
#: the notebooks folder the server serves from (only the two apps are reachable)
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@dataclass(frozen=True)
class TeamSettings:
    """How ``fracture-qi serve`` runs (see :func:`team_command`)."""

    manifest: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_TEAM_PORT
    max_kernels: int = DEFAULT_TEAM_MAX_KERNELS
    max_kernels_per_user: int = DEFAULT_MAX_KERNELS_PER_USER
    cull_idle_timeout: int = DEFAULT_CULL_IDLE_TIMEOUT_S
    cull_interval: int = DEFAULT_CULL_INTERVAL_S
    session_hours: float = DEFAULT_SESSION_HOURS
    behind_proxy: bool = False
    sign_on_header: str = ""
    audit: str = "default"

    def check(self) -> None:
        """Refuse settings that would be unsafe or cannot work.

        Raises
        ------
        ConfigError
            With the fix.
        """
        if self.max_kernels < 1 or self.max_kernels_per_user < 1:
            raise ConfigError("--max-kernels and --max-kernels-per-user must be 1 or more")
        if self.max_kernels_per_user > self.max_kernels:
            raise ConfigError(f"--max-kernels-per-user {self.max_kernels_per_user} is above "
                              f"--max-kernels {self.max_kernels}: lower it")
        if not 0.25 <= self.session_hours <= 24:
            raise ConfigError(f"--session-hours {self.session_hours}: give 0.25 to 24")
        if self.sign_on_header and not is_loopback(self.host):
            raise ConfigError(
                f"--sign-on-header trusts a header set by the reverse proxy; on {self.host} "
                "anyone who reaches the port could set it. Fix: bind 127.0.0.1 (the default) "
                "and let only the proxy on this machine reach the server")
        if self.sign_on_header and not self.behind_proxy:
            raise ConfigError("--sign-on-header needs --behind-proxy (the proxy that signs "
                              "users in also terminates TLS)")


def team_command(settings: TeamSettings) -> list[str]:
    """The server process's command line (no secret on it)."""
    s = settings
    return [
        sys.executable, "-m", "fracture_qi.team.server", str(NOTEBOOKS),
        "--no-browser",
        f"--port={int(s.port)}",
        "--Voila.port_retries=0",
        f"--Voila.ip={s.host}",
        f"--Voila.root_dir={NOTEBOOKS}",
        "--show_tracebacks=False",
        "--strip_sources=True",
        f"--MappingKernelManager.cull_idle_timeout={int(s.cull_idle_timeout)}",
        f"--MappingKernelManager.cull_interval={int(s.cull_interval)}",
        "--MappingKernelManager.cull_connected=False",
        f"--CappedKernelManager.max_kernels={int(s.max_kernels)}",
        f"--TeamKernelManager.max_kernels_per_user={int(s.max_kernels_per_user)}",
        *KERNEL_TRANSPORT_ARGS,
        f"--TeamIdentityProvider.session_hours={float(s.session_hours)}",
        f"--TeamIdentityProvider.sign_on_header={s.sign_on_header}",
        f"--TeamVoila.behind_proxy={bool(s.behind_proxy)}",
        "--VoilaConfiguration.file_allowlist=\\x00",
        "--VoilaConfiguration.file_denylist=.*",
    ]


def start_team_server(settings: TeamSettings, *, env: Mapping[str, str] | None = None,
                      stdout: int | object | None = None, stderr: int | object | None = None,
                      supervised: bool = True) -> subprocess.Popen[bytes]:
    """Start the team server in the background; return its process.

    With *supervised* (the CLI), the server stops itself when this process is gone
    (:data:`fracture_qi.serve.ENV_PARENT_PID`) and runs in its own session, so that Ctrl-C
    reaches this process, which stops it and its kernels.
    """
    settings.check()
    full = {**(env or {}), ENV_MANIFEST: str(Path(settings.manifest).resolve()),
            ENV_AUDIT: settings.audit}
    if supervised:
        full[ENV_PARENT_PID] = str(os.getpid())
    cmd = team_command(settings)
    log.info("starting the team server: %s", " ".join(cmd))
    return subprocess.Popen(cmd, env=server_env(full, None), stdout=stdout, stderr=stderr,
                            start_new_session=supervised)


def app_paths() -> Sequence[str]:
    """Where the start page links the apps (also in the docs)."""
    return ("/app/adjudicate", "/app/dashboard")


__all__ = [
    "DEFAULT_MAX_KERNELS_PER_USER",
    "DEFAULT_SESSION_HOURS",
    "DEFAULT_TEAM_MAX_KERNELS",
    "DEFAULT_TEAM_PORT",
    "TeamSettings",
    "app_paths",
    "start_team_server",
    "team_command",
]
