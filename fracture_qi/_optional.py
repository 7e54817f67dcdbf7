"""Import heavy optional dependencies where they are used, with a helpful error."""

from __future__ import annotations

import importlib
from types import ModuleType

from fracture_qi.errors import OptionalDependencyError


def import_optional(module: str, feature: str, pip_name: str | None = None) -> ModuleType:
    """Import *module* or raise :class:`OptionalDependencyError` naming the fix.

    Parameters
    ----------
    module
        Dotted module name, e.g. ``"onnxruntime"``.
    feature
        What the user was trying to do, for the message.
    pip_name
        Package to install, if it differs from the module name.
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise OptionalDependencyError(
            f"{feature} needs the Python package '{pip_name or module}', which is not installed. "
            f"Fix: pip install {pip_name or module}"
        ) from e
