"""``present``: a Qt object our code knows is there.

PyQt6's type stubs mark many getters as possibly None (a scroll area's
bar, a dialog's button, the menu bar, a list's item), since Qt returns
null for widgets without one.  Where the widget was made with one, this
says so to the type checker, and fails loudly instead of with an
AttributeError on None if that ever stops being true.
"""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


def present(value: T | None) -> T:
    if value is None:
        raise RuntimeError("a Qt object that this widget made is missing")
    return value
