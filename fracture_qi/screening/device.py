"""Choose the torch device the screener runs on.

``auto`` picks CUDA when a GPU is usable, then Apple's MPS, then the CPU. The environment
variable ``FRACTURE_QI_DEVICE`` overrides the automatic choice (``cpu``, ``cuda``, ``cuda:1``,
``mps``), so a site can pin a worker to one card without changing its manifest.
"""

from __future__ import annotations

import logging
import os

import torch

from fracture_qi.errors import ScreeningError

log = logging.getLogger(__name__)

#: environment variable that overrides ``device="auto"``
DEVICE_ENV = "FRACTURE_QI_DEVICE"


def pick_device(preference: str | torch.device | None = "auto") -> torch.device:
    """Return the torch device to screen on.

    Parameters
    ----------
    preference
        ``"auto"`` (or ``None``): the ``FRACTURE_QI_DEVICE`` environment variable when set,
        else ``cuda`` if available, else ``mps`` if available, else ``cpu``. Any other value
        (``"cpu"``, ``"cuda:0"``, a :class:`torch.device`) is used as given after a check that
        the device exists.

    Returns
    -------
    torch.device

    Raises
    ------
    ScreeningError
        When an explicitly requested device is not available on this machine.

    Examples
    --------
    >>> pick_device("cpu")
    device(type='cpu')
    """
    if isinstance(preference, torch.device):
        wanted = str(preference)
    else:
        wanted = (preference or "auto").strip().lower()
    if wanted == "auto":
        env = os.environ.get(DEVICE_ENV, "").strip().lower()
        if env and env != "auto":
            wanted = env
        elif torch.cuda.is_available():
            return torch.device("cuda")
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        else:
            return torch.device("cpu")
    try:
        dev = torch.device(wanted)
    except RuntimeError as e:
        raise ScreeningError(
            f"device {wanted!r} is not a torch device name. Fix: use auto, cpu, cuda, cuda:N or mps "
            f"(option --device or the {DEVICE_ENV} environment variable)"
        ) from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ScreeningError(
            f"device {wanted!r} was requested but torch sees no CUDA GPU here "
            f"(torch {torch.__version__}). Fix: use device auto or cpu, or install a CUDA build of torch"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ScreeningError(
            f"device {wanted!r} was requested but only {torch.cuda.device_count()} CUDA device(s) "
            "exist. Fix: pick an index below that, or use device auto"
        )
    if dev.type == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise ScreeningError(
            f"device {wanted!r} was requested but MPS is not available. Fix: use device auto or cpu"
        )
    log.debug("screening device: %s", dev)
    return dev
