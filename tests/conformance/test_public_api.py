"""The public API is exactly ``amphora.__all__``.

Everything a user needs is importable from ``amphora``; the names listed in ``__all__``
exist, are sorted, and are all the public names the package exports (helpers it imports
for its own use are private).
"""
from __future__ import annotations

import __future__
import types

import amphora
import amphora.errors


def public_names(module: types.ModuleType) -> set[str]:
    """Names in ``module`` that do not start with ``_``, other than submodules and the
    ``from __future__``/``typing`` helpers every module imports."""
    names = set()
    for name, value in vars(module).items():
        if name.startswith("_") or isinstance(value, types.ModuleType):
            continue
        if isinstance(value, __future__._Feature) or getattr(value, "__module__", None) == "typing":
            continue
        names.add(name)
    return names


def test_all_is_sorted_without_duplicates():
    assert amphora.__all__ == sorted(set(amphora.__all__))


def test_every_name_in_all_exists():
    missing = [name for name in amphora.__all__ if not hasattr(amphora, name)]
    assert missing == []


def test_all_lists_every_public_name_the_package_exports():
    assert set(amphora.__all__) == public_names(amphora)


def test_every_error_class_is_exported():
    errors = {name for name in amphora.errors.__all__
              if isinstance(getattr(amphora.errors, name), type)}
    assert errors <= set(amphora.__all__)
    for name in errors:
        assert issubclass(getattr(amphora, name), amphora.AmphoraError)
