"""One wrapper per target; the seams contribute layers to it, in a declared order.

Several fixes touch the same Axolotl function (``validate_config`` carries four seams' keys,
``get_callbacks`` adds six seams' callbacks). Each target of :data:`~._infra.targets.TARGETS` is
wrapped once (:func:`wrap`); what runs inside is the list of :class:`Layer` objects the enabled
seams added, outermost first by ``order``. A layer is ``around(call, *args, **kwargs)``:
``call(*args, **kwargs)`` runs the layers inside it and, last, the original. The layers are read at
every call, so :func:`axolotl_savefix.apply` can add a seam to a target already wrapped.

Three kinds of contribution have their own shape, because their order is part of the behaviour:

* callbacks (:func:`add_callbacks`): the trainer builder's ``get_callbacks`` returns this package's
  callbacks in :data:`CALLBACK_ORDER` (data, not the order seams were applied): those of
  :data:`FLAG_SETTERS` before Axolotl's callbacks, the others after them;
* carried config keys (:func:`carry`): checked before Axolotl's ``validate_config`` (its schema
  would drop them), put back on the validated config after it;
* rotation (:func:`add_rotation`): adjustments of ``save_total_limit`` and work around Transformers'
  ``rotate_checkpoints`` (or, before Transformers 5.3, ``Trainer._rotate_checkpoints``, which
  :func:`_rotating_method` adapts), whichever the installed release has.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import targets
from .patching import batch, patch_item, wraps

# The order of this package's callbacks in every trainer built by Axolotl's builders. The commit marker is
# not among them: it joins the trainer last, at execute_training (_infra.journal), after every callback.
CALLBACK_ORDER = (
    "saves per epoch",  # seams.saves_per_epoch
    "plan",  # seams.retention: the plan at train begin, the unset limit against the disk
    "evals per epoch",  # seams.evals_per_epoch
    "no eval on resume",  # seams.resume_matches_run
    "run record",  # _infra.journal: what each checkpoint records in trainer_state.json
    "run match",  # seams.resume_matches_run
    "rotate at train end",  # seams.retention
    "best follows output_dir",  # seams.backports
    "disk guard",  # seams.full_disk
)
# Callbacks that decide a step's save or eval (they set ``control.should_save``/``should_evaluate``) run before
# Axolotl's own callbacks, where Transformers' DefaultFlowCallback decides them in stock: Axolotl's callbacks read
# the flags at the same step (GCCallback collects garbage before a save or an eval, and after an eval).
FLAG_SETTERS = ("saves per epoch", "evals per epoch")


@dataclass(frozen=True)
class Layer:
    """One seam's part of one target: ``around(call, *args, **kwargs)``; a lower ``order`` runs outside a higher one.

    ``when``: checked when the target is wrapped (a release without what the layer fixes: left out).
    """

    target: str
    seam: str
    order: int
    around: Callable[..., Any]
    when: Callable[[], bool] | None = None


@dataclass
class _Registry:
    layers: dict[str, list[Layer]] = field(default_factory=dict)
    callbacks: dict[str, tuple[str, Callable[[Any], list[Any]]]] = field(default_factory=dict)
    carried: dict[str, tuple[int, str, Callable[[Mapping[str, Any]], Any]]] = field(default_factory=dict)
    rotation: list[tuple[int, str, Callable[..., Any]]] = field(default_factory=list)
    actions: list[tuple[str, Callable[[], None]]] = field(default_factory=list)  # run when the builder is imported
    record_fields: dict[str, Callable[[Any], Any]] = field(default_factory=dict)  # name -> provide(builder)
    wrapped: set[str] = field(default_factory=set)
    asked: dict[int, bool] = field(default_factory=dict)  # id(layer) -> its ``when``, asked once


_registry = _Registry()


def reset() -> None:
    """Forget every contribution (``revert()`` undoes the wrappers themselves)."""
    global _registry
    _registry = _Registry()


def add(layer: Layer) -> None:
    """Contribute ``layer`` to its target (wrapped by :func:`wrap_all`)."""
    layers = _registry.layers.setdefault(layer.target, [])
    layers.append(layer)
    layers.sort(key=lambda each: each.order)


def contributes(target: str, seam: str) -> bool:
    """Whether ``seam`` already contributed a layer to ``target`` (an install that runs twice adds nothing)."""
    return any(each.seam == seam for each in _registry.layers.get(target, ()))


def _active(key: str) -> list[Layer]:
    """The layers of target ``key`` that apply on this release (each ``when`` asked once)."""
    for each in _registry.layers.get(key, ()):
        if id(each) not in _registry.asked:
            _registry.asked[id(each)] = each.when is None or bool(each.when())
    return [each for each in _registry.layers.get(key, ()) if _registry.asked[id(each)]]


def _wrapper(key: str, original: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        layers = _active(key)

        def call(i: int, *a: Any, **k: Any) -> Any:
            if i == len(layers):
                return original(*a, **k)
            return layers[i].around(functools.partial(call, i + 1), *a, **k)

        return call(0, *args, **kwargs)

    return wrapper


def wrap(key: str) -> bool:
    """Wrap target ``key`` once (where it is present on this release); whether it is wrapped now.

    Raises :class:`~._infra.targets.PatchTargetError` (naming the versions) when it moved.
    """
    if key in _registry.wrapped:
        return True
    if not targets.present(key) or not _active(key):
        return False  # not on this release, or every layer steps aside here: the target stays stock's
    owner, name, original = targets.resolve(key)
    patch_item(owner, name, _wrapper(key, original), rebind_copies=targets.TARGETS[key].rebind)
    _registry.wrapped.add(key)
    return True


def on_builder(seam: str, action: Callable[[], None]) -> None:
    """Run ``action`` when the trainer builder is imported (a data patch, such as a file name; undone by ``revert``)."""
    if all(existing is not action for _, existing in _registry.actions):
        _registry.actions.append((seam, action))


def wrap_all(*, builder: bool) -> list[str]:
    """Wrap every target that has a contribution: the config-time ones, or (``builder``) the trainer builder's.

    With ``builder`` the :func:`on_builder` actions run too. One pass over ``sys.modules`` for all the
    rebinds (:func:`~._infra.patching.batch`).
    """
    done = []
    with batch():
        for key in list(_registry.layers):
            if targets.TARGETS[key].builder == builder and wrap(key):
                done.append(key)
        if builder:
            for _, action in _registry.actions:
                action()
    return done


# --- callbacks -------------------------------------------------------------------------------------------------


def add_callbacks(name: str, seam: str, provide: Callable[[Any], list[Any]]) -> None:
    """``provide(builder)`` returns the callbacks named ``name`` (one of :data:`CALLBACK_ORDER`) for a trainer."""
    if name not in CALLBACK_ORDER:
        raise ValueError(f"callbacks {name!r} have no place in CALLBACK_ORDER")
    _registry.callbacks[name] = (seam, provide)
    if not contributes("get_callbacks", "callbacks"):
        add(Layer("get_callbacks", "callbacks", 0, _with_callbacks))


def _with_callbacks(call: Callable[..., Any], builder: Any, *args: Any, **kwargs: Any) -> Any:
    axolotls = call(builder, *args, **kwargs)
    first: list[Any] = []
    last: list[Any] = []
    for name in CALLBACK_ORDER:
        if name in _registry.callbacks:
            (first if name in FLAG_SETTERS else last).extend(_registry.callbacks[name][1](builder))
    axolotls[:0] = first  # the same list object: a caller holding it sees the callbacks
    axolotls.extend(last)
    return axolotls


def add_record_field(name: str, seam: str, provide: Callable[[Any], Any]) -> None:  # noqa: ARG001 - the seam, for symmetry
    """A field of the run record every checkpoint carries (``_infra.journal``): ``provide(builder)`` at trainer build."""
    _registry.record_fields[name] = provide


def record_fields(builder: Any) -> dict[str, Any]:
    """The fields seams contributed to the run record, for ``builder``'s trainer."""
    return {name: provide(builder) for name, provide in _registry.record_fields.items()}


# --- config keys carried past Axolotl's schema -------------------------------------------------------------------


def carry(key: str, seam: str, order: int, check: Callable[[Mapping[str, Any]], Any]) -> None:
    """Check ``key`` (``check(cfg)`` raises :class:`SaveFixConfigError` naming it) before Axolotl validates; put it back after.

    Keys are checked outermost first by ``order``; ``check`` returns the value to carry (None: unset).
    """
    _registry.carried[key] = (order, seam, check)
    if not contributes("validate_config", "carried keys"):
        add(Layer("validate_config", "carried keys", 0, _carrying))


def _carrying(call: Callable[..., Any], cfg: Any, *args: Any, **kwargs: Any) -> Any:
    ordered = sorted(_registry.carried.items(), key=lambda item: item[1][0])
    values = {key: check(cfg) for key, (_, _, check) in ordered}  # first: a bad value stops the run
    validated = call(cfg, *args, **kwargs)
    for key, value in values.items():
        if value is not None:
            validated[key] = value
    return validated


# --- rotation ------------------------------------------------------------------------------------------------------


def add_rotation(seam: str, order: int, around: Callable[..., Any]) -> None:
    """``around(call, output_dir, save_total_limit)`` around every rotation: it may act first, change the limit, wrap it.

    ``call(output_dir, save_total_limit)`` runs the contributions inside and Transformers' rotation last.
    Transformers 5.3 on rotate in ``rotate_checkpoints``; before 5.3 in ``Trainer._rotate_checkpoints``
    (:func:`_rotating_method` adapts it); both are wrapped here.
    """
    if any(each_seam == seam for _, each_seam, _ in _registry.rotation):
        return  # installed twice: once is enough
    _registry.rotation.append((order, seam, around))
    _registry.rotation.sort(key=lambda each: each[0])
    if not contributes("rotate_checkpoints", "rotation"):
        add(Layer("rotate_checkpoints", "rotation", 0, _rotating))
        add(Layer("rotate_method", "rotation", 0, _rotating_method))


def rotate_through(output_dir: str, save_total_limit: int | None, run: Callable[[int | None], Any]) -> Any:
    """Run the rotation contributions around ``run(save_total_limit)`` (the release's own rotation), in order."""
    chain = [around for _, _, around in _registry.rotation]

    def call(i: int, where: str, limit: int | None) -> Any:
        if i == len(chain):
            return run(limit)
        return chain[i](functools.partial(call, i + 1), where, limit)

    return call(0, output_dir, save_total_limit)


def _rotating(call: Callable[..., Any], output_dir: str, save_total_limit: int | None = None, *args: Any, **kwargs: Any) -> Any:
    return rotate_through(output_dir, save_total_limit, lambda limit: call(output_dir, limit, *args, **kwargs))


def _rotating_method(rotate: Callable[..., Any], trainer: Any, use_mtime: bool = False, output_dir: str | None = None) -> Any:
    """Before Transformers 5.3: ``Trainer._rotate_checkpoints`` (limit in ``args``) through :func:`rotate_through`."""
    where = output_dir or trainer.args.output_dir
    limit = trainer.args.save_total_limit

    def run(adjusted: int | None) -> Any:
        trainer.args.save_total_limit = adjusted
        try:
            return rotate(trainer, use_mtime, output_dir)
        finally:
            trainer.args.save_total_limit = limit

    return rotate_through(where, limit, run)


def can_rotate_now() -> bool:
    """Whether :func:`rotate_now` can rotate on the installed release (Transformers 5.3 on)."""
    return targets.present("rotate_checkpoints")


def rotate_now(output_dir: str, save_total_limit: int | None, best_model_checkpoint: str | None) -> bool:
    """Run the rotation a save would run, from outside a save (a callback); False where the release cannot.

    Transformers 5.3 on: its ``rotate_checkpoints`` (the wrapped one, looked up now). Before 5.3 the
    rotation is a ``Trainer`` method a callback cannot reach: nothing happens (stock's behaviour).
    """
    if not targets.present("rotate_checkpoints"):
        return False
    owner, name, _ = targets.resolve("rotate_checkpoints")
    getattr(owner, name)(
        output_dir=output_dir,
        save_total_limit=save_total_limit,
        best_model_checkpoint=best_model_checkpoint,
        use_mtime=True,  # as Trainer._save_checkpoint
    )
    return True
