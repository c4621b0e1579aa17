"""The registry of originals, on throwaway modules (no Axolotl needed)."""

import contextlib
import sys
import types

import pytest

from axolotl_savefix._infra import patching as _patching


@pytest.fixture
def modules():
    src = types.ModuleType("sf_fake.src")

    def target(x):
        """doc"""
        return x

    target.__module__ = "sf_fake.src"
    src.target = target
    copy = types.ModuleType("sf_fake.copy")  # a module of the same package
    copy.target = target  # what `from sf_fake.src import target` leaves behind
    copy.renamed = target  # `from sf_fake.src import target as renamed`
    user = types.ModuleType("sf_user")  # another package's `from sf_fake.src import target`
    user.target = target
    sys.modules.update({"sf_fake.src": src, "sf_fake.copy": copy, "sf_user": user})
    yield src, copy, target
    _patching.undo_all()
    for name in ("sf_fake.src", "sf_fake.copy", "sf_user"):
        sys.modules.pop(name)


def test_patch_rebinds_copies_and_undo_restores_identity(modules):
    src, copy, original = modules

    @_patching.wraps(original)
    def replacement(x):
        return original(x) + 1

    _patching.patch_item(src, "target", replacement, rebind_copies=True)
    assert src.target is replacement and copy.target is replacement and copy.renamed is replacement
    assert sys.modules["sf_user"].target is replacement
    assert src.target(1) == 2
    assert replacement.__name__ == "target" and replacement.__doc__ == "doc"
    assert replacement.__wrapped__ is original and replacement.__savefix_original__ is original
    assert _patching.get_original(src, "target") is original
    _patching.undo_all()
    assert src.target is original and copy.target is original and copy.renamed is original
    assert sys.modules["sf_user"].target is original
    assert not _patching.is_patched()


def test_undo_also_restores_copies_made_while_patched(modules):
    # a module first imported during the patched run binds the replacement; a stock run after
    # undo_all() in the same interpreter must not reach it through that copy
    src, _, original = modules

    @_patching.wraps(original)
    def replacement(x):
        return original(x) + 1

    _patching.patch_item(src, "target", replacement, rebind_copies=True)
    late = types.ModuleType("sf_late")  # `from sf_fake.src import target`, imported while patched
    late.target = replacement
    late_alias = types.ModuleType("sf_fake.late")  # `... import target as alias`, in the target's package
    late_alias.alias = replacement
    sys.modules.update({"sf_late": late, "sf_fake.late": late_alias})
    try:
        _patching.undo_all()
        assert src.target is original
        assert late.target is original and late_alias.alias is original
    finally:
        sys.modules.pop("sf_late")
        sys.modules.pop("sf_fake.late")


def test_layered_patches_unwind_to_the_original(modules):
    src, _, original = modules
    first, second = (lambda x: "first"), (lambda x: "second")
    _patching.patch_item(src, "target", first)
    _patching.patch_item(src, "target", second)
    assert src.target is second
    assert _patching.get_original(src, "target") is original
    _patching.undo_all()
    assert src.target is original


def test_an_attribute_that_was_inherited_is_removed_again():
    class Base:
        def method(self):
            return "base"

    class Child(Base):
        pass

    _patching.patch_item(Child, "method", lambda self: "child")
    assert Child().method() == "child"
    _patching.undo_all()
    assert "method" not in vars(Child) and Child().method() == "base"


def test_without_rebind_copies_stay(modules):
    src, copy, original = modules
    _patching.patch_item(src, "target", lambda x: x)
    assert copy.target is original


def test_a_hook_for_a_module_not_yet_imported_runs_right_after_its_import(tmp_path, monkeypatch):
    (tmp_path / "sf_later.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ran = []
    _patching.when_imported("sf_later", lambda: ran.append(sys.modules["sf_later"].VALUE))
    assert ran == [] and _patching.is_patched()  # pending counts as applied: apply() stays idempotent
    import sf_later  # noqa: F401

    assert ran == [1] and not _patching.pending()
    _patching.when_imported("sf_later", lambda: ran.append("now"))  # already imported: at once
    assert ran == [1, "now"]
    sys.modules.pop("sf_later")


def test_undo_drops_pending_hooks(tmp_path, monkeypatch):
    (tmp_path / "sf_never.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    ran = []
    _patching.when_imported("sf_never", lambda: ran.append(1))
    _patching.undo_all()
    import sf_never  # noqa: F401

    assert ran == [] and not _patching.is_patched()
    sys.modules.pop("sf_never")


def test_a_batch_rebinds_layered_patches_once_to_the_last_and_undo_restores(modules):
    # apply() patches validate_config four times (layered wrappers) inside one batch: the copies
    # must end at the outermost wrapper, in one pass at the end, and unwind to the original
    src, copy, original = modules
    user = sys.modules["sf_user"]

    def first(x):
        return original(x) + 1

    def second(x):
        return first(x) + 1

    first.__module__ = second.__module__ = "sf_fake.src"  # functools.wraps keeps the original's module
    with _patching.batch():
        _patching.patch_item(src, "target", first, rebind_copies=True)
        _patching.patch_item(src, "target", second, rebind_copies=True)
        assert src.target is second
        assert copy.target is original  # put off to the end of the batch
    assert copy.target is second and copy.renamed is second and user.target is second
    assert src.target(1) == 3
    _patching.undo_all()
    assert src.target is original and copy.target is original and copy.renamed is original
    assert user.target is original
    assert not _patching.is_patched()


def test_a_batch_rebinds_what_one_patch_at_a_time_rebinds(modules):
    src, copy, original = modules
    places = [(copy, "target"), (copy, "renamed"), (sys.modules["sf_user"], "target")]

    def rebound(batched: bool) -> set[tuple[str, str]]:
        replacement = lambda x: x  # noqa: E731
        with _patching.batch() if batched else contextlib.nullcontext():
            _patching.patch_item(src, "target", replacement, rebind_copies=True)
        found = {(m.__name__, k) for m, k in places if getattr(m, k) is replacement}
        _patching.undo_all()
        assert all(getattr(m, k) is original for m, k in places)
        return found

    assert rebound(batched=True) == rebound(batched=False) == {(m.__name__, k) for m, k in places}


def test_undo_inside_a_batch_leaves_nothing_to_rebind(modules):
    # apply() undoes everything when a target moved; the batch's end must not rebind afterwards
    src, copy, original = modules
    with pytest.raises(RuntimeError), _patching.batch():
        _patching.patch_item(src, "target", lambda x: x, rebind_copies=True)
        _patching.undo_all()
        raise RuntimeError("a target moved")
    assert src.target is original and copy.target is original
    assert not _patching.is_patched()


@pytest.mark.parametrize("batched", [False, True])
def test_the_owner_module_keeps_its_own_aliases(modules, batched):
    # module_copies skips the owner: `validate = validate_config` inside axolotl.utils.config
    # stays Axolotl's own, batched or not
    src, copy, original = modules
    src.alias = original
    with _patching.batch() if batched else contextlib.nullcontext():
        _patching.patch_item(src, "target", lambda x: x, rebind_copies=True)
    assert src.alias is original and copy.target is src.target
    _patching.undo_all()
    assert src.alias is original and src.target is original and copy.target is original
