"""The registry of originals: patch an attribute, rebind its copies, undo exactly.

Modelled on gevent's ``monkey`` (a ``saved`` registry, ``get_original``) and
pytest's ``MonkeyPatch`` (an undo stack):

* :func:`patch_item` records what was there (the very object, or its absence)
  and sets the replacement. It also rebinds every *module-level copy* of the
  original: ``from axolotl.utils.config import normalize_config`` made one in
  ``axolotl.cli.config``, and a patch of the source module alone would miss it.
* :func:`undo_all` walks the stack backwards, so layered patches of the same
  attribute unwind to the original object (identity, not equality).

Nothing here rewrites source text.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

_MISSING = object()

# (owner id, name) -> the original object, recorded the first time it is patched
_originals: dict[tuple[int, str], Any] = {}


@dataclass
class _Change:
    owner: Any
    name: str
    previous: Any  # the object that was there, or _MISSING
    replacement: Any = _MISSING  # set for a rebind_copies patch: copies of it made later are undone too


_stack: list[_Change] = []


def _set(owner: Any, name: str, value: Any) -> None:
    if value is _MISSING:
        delattr(owner, name)
    else:
        setattr(owner, name, value)


def _raw(owner: Any, name: str) -> Any:
    """The attribute as stored on ``owner`` itself (no inheritance, no descriptor binding)."""
    return vars(owner).get(name, _MISSING)


def get_original(owner: Any, name: str) -> Any:
    """The object ``owner.name`` held before this package first patched it."""
    return _originals.get((id(owner), name), _raw(owner, name))


def module_copies(original: Any, name: str | None = None, *, skip: Any = None) -> list[tuple[ModuleType, str]]:
    """Every ``(module, key)`` whose module-level global *is* ``original``.

    A ``from x import f`` copy keeps the name ``f``: every loaded module is asked
    for ``name`` (one dict lookup each). Aliased copies (``from x import f as g``)
    are found by a scan of every global, but only in the modules of the package
    that owns ``original`` (``axolotl.*``): a full scan of the thousands of
    modules a training process holds costs about 50 ms per patched function,
    which a run pays on every start. Without ``name``, every global of every
    module is scanned. :func:`_copies_of_all` does the same for many objects in one pass.
    """
    found = _copies_of_all({id(original): (original, name)}, skip=skip)
    return [(module, key) for module, key, _ in found]


def _package(obj: Any) -> str:
    return (getattr(obj, "__module__", None) or "").split(".", 1)[0]


def _copies_of_all(wanted: dict[int, tuple[Any, str | None]], *, skip: Any = None) -> list[tuple[ModuleType, str, Any]]:
    """:func:`module_copies` for every object of ``wanted`` (``id(obj) -> (obj, name)``) in one pass over ``sys.modules``.

    Returns ``(module, key, obj)`` for each module-level global that *is* one of them.
    """
    packages = {_package(obj) for obj, _ in wanted.values()} - {""}
    names = {name for _, name in wanted.values() if name is not None}
    everywhere = any(name is None for _, name in wanted.values())
    found = []
    for module_name, module in list(sys.modules.items()):
        if module is None or module is skip:
            continue
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        if everywhere or module_name.split(".", 1)[0] in packages:
            for key, value in list(namespace.items()):
                hit = wanted.get(id(value))
                if hit is not None and hit[0] is value:
                    found.append((module, key, value))
            continue
        for name in names:
            value = namespace.get(name, _MISSING)
            hit = wanted.get(id(value))
            if hit is not None and hit[0] is value and hit[1] == name:
                found.append((module, name, value))
    return found


# rebinds of module-level copies put off to the end of a batch(): id(old) -> (old, name, new, owner)
_Moves = dict[int, tuple[Any, str, Any, Any]]
_deferred: _Moves | None = None


def _follow(value: Any, moves: _Moves) -> Any:
    """``value`` moved along ``moves`` (old -> new) until it is not moved again (layered patches of one attribute)."""
    while (move := moves.get(id(value))) is not None and move[0] is value:
        value = move[2]
    return value


def _rebind(moves: _Moves, *, record: bool) -> None:
    """Set every module-level copy of each ``old`` in ``moves`` to where it ends up; ``record``: on the undo stack.

    The owner of the patched attribute is skipped for its own object, as :func:`module_copies` skips it.
    """
    if not moves:
        return
    for module, key, value in _copies_of_all({k: (old, name) for k, (old, name, _, _) in moves.items()}):
        if module is moves[id(value)][3]:
            continue
        if record:
            _stack.append(_Change(module, key, value))
        _set(module, key, _follow(value, moves))


@contextlib.contextmanager
def batch() -> Iterator[None]:
    """Patches made in the block rebind their module-level copies at its end, all in one pass over ``sys.modules``.

    :func:`patch_item` with ``rebind_copies`` costs one pass per call otherwise (ten at a run's
    start, about 8 ms each); in the block, the copies hold the original until the block ends
    (nothing runs them in between: :func:`axolotl_savefix.apply` only imports and patches).
    """
    global _deferred
    if _deferred is not None:
        yield
        return
    _deferred = {}
    try:
        yield
    finally:
        moves, _deferred = _deferred, None
        _rebind(moves, record=True)


def patch_item(owner: Any, name: str, replacement: Any, *, rebind_copies: bool = False) -> None:
    """Set ``owner.name = replacement``, remembering what was there.

    With ``rebind_copies``, module-level copies of the current object (made by
    ``from owner import name`` before the patch) are rebound too, each one
    recorded so that :func:`undo_all` restores it.
    """
    current = _raw(owner, name)
    _originals.setdefault((id(owner), name), current)
    targets = [(owner, name)]
    if rebind_copies and current is not _MISSING:
        if _deferred is not None:
            _deferred[id(current)] = (current, name, replacement, owner)  # at the end of the batch
        else:
            targets += module_copies(current, name, skip=owner)
    for target, key in targets:
        change = _Change(target, key, _raw(target, key))
        if rebind_copies and target is owner:
            change.replacement = replacement
        _stack.append(change)
        _set(target, key, replacement)


class _HookedLoader(importlib.abc.Loader):
    """The module's own loader; after it has executed the module, the hooks for that module run."""

    def __init__(self, loader: Any, run_hooks: Callable[[], None]) -> None:
        self.loader, self.run_hooks = loader, run_hooks

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        self.run_hooks()

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, ... for tracebacks and inspect
        return getattr(self.loader, name)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Runs hooks right after a named module is first imported (wrapt's post-import hooks, in small)."""

    def __init__(self) -> None:
        self.hooks: dict[str, list[Callable[[], None]]] = {}

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in self.hooks:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _HookedLoader(spec.loader, lambda: self.run(fullname))
        return spec

    def run(self, fullname: str) -> None:
        for hook in self.hooks.pop(fullname, []):
            hook()


_post_import = _PostImportFinder()


def when_imported(module_name: str, hook: Callable[[], None]) -> None:
    """Run ``hook`` now if ``module_name`` is imported, else right after its first import.

    Used for the trainer builder: importing it costs a run about 2 s of imports (TRL, wandb), and
    importing it at config time, earlier than Axolotl itself does, measured slower than letting
    Axolotl import it when it builds the trainer. A hook that raises makes that import raise.
    """
    if module_name in sys.modules:
        hook()
        return
    if _post_import not in sys.meta_path:
        sys.meta_path.insert(0, _post_import)
    _post_import.hooks.setdefault(module_name, []).append(hook)


def pending() -> bool:
    return any(_post_import.hooks.values())


def undo_all() -> None:
    """Restore every patched attribute and copy to exactly what was there; drop pending hooks.

    For a ``rebind_copies`` patch, copies of the replacement made *while* it was in place (a
    module first imported then, running ``from owner import name``) are rebound to what was
    there before as well: without that, a stock run after :func:`undo_all` in the same
    interpreter still ran part of the patch (``axolotl.cli.config`` imported during a patched run
    kept the patched ``normalize_config`` and ``validate_config``, ``axolotl.train`` the patched
    ``determine_last_checkpoint``: stock then saved once per epoch, not at its own steps).
    """
    if _deferred is not None:
        _deferred.clear()  # undone inside a batch: nothing left to rebind at its end
    moves: _Moves = {}
    while _stack:
        change = _stack.pop()
        _set(change.owner, change.name, change.previous)
        if change.replacement is not _MISSING and change.previous is not _MISSING:
            moves[id(change.replacement)] = (change.replacement, change.name, change.previous, change.owner)
    _rebind(moves, record=False)  # one pass for all of them
    _originals.clear()
    _post_import.hooks.clear()
    if _post_import in sys.meta_path:
        sys.meta_path.remove(_post_import)


def is_patched() -> bool:
    return bool(_stack) or pending()


def wraps(original: Callable[..., Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``functools.wraps`` that also marks the wrapper as ours (name, doc, signature kept)."""

    def decorate(wrapper: Callable[..., Any]) -> Callable[..., Any]:
        wrapper = functools.wraps(original)(wrapper)
        wrapper.__savefix_original__ = original  # type: ignore[attr-defined]
        return wrapper

    return decorate


@contextlib.contextmanager
def key_hidden(cfg: MutableMapping[str, Any], key: str) -> Iterator[Any]:
    """Run a block with ``cfg[key]`` set to ``None`` (an upstream function must not see it), then put it back."""
    value = cfg.get(key)
    cfg[key] = None
    try:
        yield value
    finally:
        cfg[key] = value
