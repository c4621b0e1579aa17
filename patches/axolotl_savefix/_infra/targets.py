"""Every patch target, declared once (:data:`TARGETS`), and how one is found or the version named.

A target is ``module``, ``attribute path`` and the parameters this package relies on, with the
releases where it is used (:attr:`Target.present`). Seams name targets by key, for what they patch
and for what they only call (Transformers' ``rotate_checkpoints``), so a call to a function a
release does not have cannot happen: :func:`present` says so first. When a release moves or
reshapes a target, :func:`resolve` fails with one clear error naming the installed versions
instead of a silently unpatched run. ``tests/axolotl/test_targets.py`` walks the table on every
release of ``nox -s compat``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .releases import (  # noqa: F401 - re-exported: the targets' errors name these
    PROVEN,
    SUPPORTED,
    UPSTREAM_FIX_MODULE,
    UPSTREAM_FIX_NAME,
    axolotl_version,
    outside_proven,
    package_version,
    release_tuple,
    savefix_version,
    upstream_fixed,
)


class PatchTargetError(RuntimeError):
    """The installed Axolotl does not have what a patch replaces."""

    __module__ = "axolotl_savefix"  # its public name: tracebacks and the guide say axolotl_savefix.PatchTargetError


def _failure(module_name: str, path: str, problem: str) -> PatchTargetError:
    """The error for a target that moved: the installed versions, the target, what is wrong, the fix."""
    package = module_name.partition(".")[0]
    # a target in Transformers (or accelerate, torch) moves with that package's release, not Axolotl's
    beside = "" if package == "axolotl" else f" with {package} {package_version(package)}"
    return PatchTargetError(
        f"axolotl-savefix {savefix_version()} cannot patch axolotl {axolotl_version()}{beside}: "
        f"{module_name}.{path} {problem}. axolotl-savefix supports axolotl {SUPPORTED}. "
        "Install a supported axolotl, or remove axolotl_savefix.SaveFixPlugin from "
        "`plugins` (and any axolotl_savefix.apply() call) to train without the fix."
    )


def require(module_name: str, path: str, params: tuple[str, ...] = ()) -> tuple[Any, str, Any]:
    """Return ``(owner, name, object)`` for ``module_name:path`` or raise :class:`PatchTargetError`.

    ``path`` is dotted inside the module (``"TrainerBuilderBase.get_callbacks"``);
    ``params`` are parameter names the target must accept.
    """

    def fail(problem: str) -> PatchTargetError:
        return _failure(module_name, path, problem)

    try:
        owner: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise fail(f"cannot be imported ({exc})") from exc
    *parents, name = path.split(".")
    for part in parents:
        owner = getattr(owner, part, None)
        if owner is None:
            raise fail(f"is missing ({part!r} not found)")
    target = getattr(owner, name, None)
    if not callable(target):
        raise fail("is missing")
    try:
        accepted = inspect.signature(target).parameters
    except (TypeError, ValueError):  # a builtin without a text signature (torch's C functions)
        if params:
            raise fail("has no signature to check") from None
        accepted = {}  # type: ignore[assignment]
    missing = [p for p in params if p not in accepted]
    if missing:
        raise fail(f"no longer takes {', '.join(missing)} (signature is {inspect.signature(target)})")
    return owner, name, target


# --- the table -------------------------------------------------------------------------------------------------


def _release(distribution: str) -> tuple[int, ...]:
    return release_tuple(package_version(distribution)) or (0,)


def _before(distribution: str, version: tuple[int, ...]) -> Callable[[], bool]:
    return lambda: _release(distribution) < version


def _since(distribution: str, version: tuple[int, ...]) -> Callable[[], bool]:
    return lambda: _release(distribution) >= version


def _module_exists(name: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            return False

    return check


@dataclass(frozen=True)
class Target:
    """One thing this package patches or calls in Axolotl, Transformers or torch.

    ``key``: how seams name it. ``module``, ``path`` (dotted inside the module), ``params`` (names it
    must accept). ``rebind``: ``from module import name`` copies elsewhere are rebound too.
    ``builder``: patched when Axolotl imports its trainer builder (``axolotl.core.builders.base``), not
    at config time. ``where``: the releases it is used on, in words; ``when``: the same as a check of
    the installed versions (None: every release). ``only_there``: outside ``where`` it does not exist
    (the table's walk checks both sides). ``data``: a constant, not a callable.
    """

    key: str
    module: str
    path: str
    params: tuple[str, ...] = ()
    rebind: bool = False
    builder: bool = False
    where: str = "every release"
    when: Callable[[], bool] | None = None
    only_there: bool = False
    data: bool = False


_TRANSFORMERS_5_0 = (5, 0, 0)
_TRANSFORMERS_5_3 = (5, 3, 0)
TOKENS_MODULE = "axolotl.utils.callbacks.tokens_per_second"
RELORA_MODULE = "axolotl.monkeypatch.relora"
BUILDER_MODULE = "axolotl.core.builders.base"

TARGETS: dict[str, Target] = {
    t.key: t
    for t in (
        Target("normalize_config", "axolotl.utils.config", "normalize_config", ("cfg",), rebind=True),
        Target("validate_config", "axolotl.utils.config", "validate_config", ("cfg",), rebind=True),
        Target("determine_last_checkpoint", "axolotl.utils.train", "determine_last_checkpoint", ("cfg",), rebind=True),
        Target("save_trained_model", "axolotl.train", "save_trained_model", ("cfg", "trainer", "model"), rebind=True),
        Target("setup_signal_handler", "axolotl.train", "setup_signal_handler", ("cfg", "model"), rebind=True),
        Target("execute_training", "axolotl.train", "execute_training", ("cfg", "trainer", "resume_from_checkpoint"), rebind=True),
        Target("configure_strategy", BUILDER_MODULE, "TrainerBuilderBase._configure_save_and_eval_strategy",
               ("training_args_kwargs",), builder=True),
        Target("get_callbacks", BUILDER_MODULE, "TrainerBuilderBase.get_callbacks", builder=True),
        Target("pre_training_args", BUILDER_MODULE, "TrainerBuilderBase.hook_pre_create_training_args",
               ("training_arguments_kwargs",), builder=True),
        Target("trainer_save_checkpoint", "transformers.trainer", "Trainer._save_checkpoint", ("model", "trial"), builder=True),
        Target("axolotl_save_checkpoint", "axolotl.core.trainers.base", "AxolotlTrainer._save_checkpoint", ("model", "trial"),
               builder=True),
        Target("axolotl_save", "axolotl.core.trainers.base", "AxolotlTrainer._save", ("output_dir", "state_dict"), builder=True),
        Target("rotate_checkpoints", "transformers.trainer", "rotate_checkpoints", ("output_dir", "save_total_limit"),
               builder=True, where="transformers >= 5.3", when=_since("transformers", _TRANSFORMERS_5_3), only_there=True),
        Target("rotate_method", "transformers.trainer", "Trainer._rotate_checkpoints", ("use_mtime", "output_dir"), builder=True,
               where="transformers < 5.3 (Axolotl 0.13.2, 0.14.0)", when=_before("transformers", _TRANSFORMERS_5_3),
               only_there=True),
        Target("skip_first_batches", "transformers.trainer", "skip_first_batches", ("dataloader", "num_batches"),
               where="transformers < 5.0 (Transformers issue 40690)", when=_before("transformers", _TRANSFORMERS_5_0)),
        Target("worker_signal_handlers", "torch.utils.data._utils.signal_handling", "_set_worker_signal_handlers"),
        Target("tokens_on_train_begin", TOKENS_MODULE, "TokensPerSecondCallback.on_train_begin", ("args", "state"),
               builder=True, where="releases with TokensPerSecondCallback", when=_module_exists(TOKENS_MODULE)),
        Target("tokens_file_read", TOKENS_MODULE, "TOKENS_STATE_FILE", builder=True, data=True,
               where="releases with TokensPerSecondCallback", when=_module_exists(TOKENS_MODULE)),
        Target("tokens_file_written", "axolotl.core.trainers.base", "TOKENS_STATE_FILE", builder=True, data=True,
               where="releases with TokensPerSecondCallback", when=_module_exists(TOKENS_MODULE)),
        Target("relora_on_train_begin", RELORA_MODULE, "ReLoRACallback.on_train_begin", builder=True,
               where="releases with ReLoRA", when=_module_exists(RELORA_MODULE)),
    )
}  # fmt: skip


def present(key: str) -> bool:
    """Whether target ``key`` is used on the installed releases (its :attr:`Target.when`)."""
    target = TARGETS[key]
    return target.when is None or target.when()


def resolve(key: str) -> tuple[Any, str, Any]:
    """``(owner, name, object)`` of target ``key``; raises :class:`PatchTargetError` naming the versions when it moved."""
    target = TARGETS[key]
    if target.data:
        owner = _import(target)
        *parents, name = target.path.split(".")
        if not hasattr(owner, name):
            raise _failure(target.module, target.path, "is missing")
        return owner, name, getattr(owner, name)
    return require(target.module, target.path, target.params)


def _import(target: Target) -> Any:
    try:
        return importlib.import_module(target.module)
    except ImportError as exc:
        raise _failure(target.module, target.path, f"cannot be imported ({exc})") from exc
