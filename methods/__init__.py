"""Method packages. Importing ``methods`` registers every trial: each ``methods/<pkg>/trials.py``
is imported (discovery), so a new package needs no edit here."""

from __future__ import annotations

import importlib
import pkgutil


def discover() -> list[str]:
    """Import every ``methods.<pkg>.trials`` module; return their names."""
    loaded = []
    for info in pkgutil.iter_modules(__path__):
        if not info.ispkg:
            continue
        name = f"{__name__}.{info.name}.trials"
        if importlib.util.find_spec(name) is None:
            continue
        importlib.import_module(name)
        loaded.append(name)
    return loaded
