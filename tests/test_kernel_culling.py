"""The servers' kernel managers and kernels that are still starting.

jupyter_server sets a kernel's ``last_activity`` once the kernel is up; read before that, the
trait raises ``TraitError``. Its culler guards the read with ``hasattr``, which lets that
through, so a culling pass that met a kernel still starting logged a traceback (seen in
``test_team_server.py``'s three loads at once, whose log must hold none). The servers' own
reclaiming and reaping read it too.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from jupyter_server.services.kernels.kernelmanager import ServerKernelManager
from traitlets import TraitError

from fracture_qi.team.kernels import TeamKernelManager
from fracture_qi.voila_guard import CappedKernelManager, last_activity


def _starting() -> ServerKernelManager:
    km = ServerKernelManager()
    with pytest.raises(TraitError):  # the upstream behaviour guarded against
        _ = km.last_activity
    return km


def test_last_activity_of_a_starting_kernel_is_none() -> None:
    assert last_activity(_starting()) is None


@pytest.mark.parametrize("manager", [CappedKernelManager, TeamKernelManager])
def test_culling_passes_over_a_starting_kernel_without_a_traceback(manager, caplog) -> None:  # type: ignore[no-untyped-def]
    mgr = manager()
    mgr._kernels["starting"] = _starting()
    with caplog.at_level(logging.DEBUG):
        asyncio.run(mgr.cull_kernels())
        asyncio.run(mgr._reclaim_abandoned())
    assert "starting" in mgr._kernels  # not culled: it has done nothing yet
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], [
        r.getMessage() for r in caplog.records]
