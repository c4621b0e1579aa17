"""Issue 37, item 5: a commit marker, run record or pending record that is not one is bad input, never a verdict.

Whatever bytes those files hold, every reader returns, fast, without raising; a marker or record
that does not parse, has the wrong types or claims what no job has is treated as absent (the folder
is judged file by file) with one note.
"""

import json
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_checkpoints import make_checkpoint

from axolotl_savefix import cli
from axolotl_savefix.rules import checkpoints, decision

FAST = 2.0  # seconds: a bound no well-formed checkpoint comes near (a judge takes milliseconds)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=25,
)
marker_like = st.fixed_dictionaries(
    {},
    optional={
        "format": st.sampled_from([1, True, 1.0, "1", 2]) | json_values,
        "global_step": st.sampled_from([8, "8", 8.0, -1, True, 9]) | json_values,
        "world_size": st.sampled_from([1, 2, 10**7, 10**12, 0, -3, "2", True]) | json_values,
        "save_only_model": st.sampled_from([True, False, 0, "false"]) | json_values,
        "files": st.dictionaries(st.text(max_size=30), st.integers(-5, 10**6) | json_values, max_size=6) | json_values,
    },
)
contents = (json_values | marker_like).map(lambda v: json.dumps(v).encode()) | st.binary(max_size=200)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _timed(fn, *args):
    start = time.monotonic()
    out = fn(*args)
    assert time.monotonic() - start < FAST
    return out


@SETTINGS
@given(data=contents)
def test_any_marker_content_returns_fast_and_never_raises(tmp_path_factory, data):
    folder = make_checkpoint(tmp_path_factory.mktemp("m"), 8, world=2)
    (folder / checkpoints.MARKER).write_bytes(data)
    judged = _timed(checkpoints.judge, folder)
    marker, note = checkpoints.load_marker(folder)
    if marker is None:
        assert judged.lacks == () and not judged.marked  # judged file by file: the folder is whole
        assert note is not None  # the file is there: one note says why it is not read
    else:
        assert judged.marked and (note is None)
    _timed(decision.main_part, folder)
    _timed(checkpoints.own_cut, folder)
    _timed(cli.inventory, folder.parent)


@SETTINGS
@given(data=contents)
def test_any_trainer_state_content_returns_fast_and_never_raises(tmp_path_factory, data):
    folder = make_checkpoint(tmp_path_factory.mktemp("s"), 8, world=2)
    (folder / checkpoints.STATE).write_bytes(data)
    judged = _timed(checkpoints.judge, folder)
    state = None
    try:
        state = json.loads(data)
    except ValueError:
        pass
    if not (isinstance(state, dict) and type(state.get("global_step")) is int and state["global_step"] == 8):
        assert judged.lacks and judged.lacks[0].startswith(checkpoints.STATE)
    _timed(decision.main_part, folder)
    _timed(checkpoints.load_record, state)


@SETTINGS
@given(record=json_values)
def test_any_run_record_is_read_or_set_aside_with_a_note(tmp_path_factory, record):
    folder = make_checkpoint(tmp_path_factory.mktemp("r"), 8)
    state = {"global_step": 8, "stateful_callbacks": {checkpoints.RECORD: {"args": {}, "attributes": record}}}
    (folder / checkpoints.STATE).write_text(json.dumps(state))
    judged = _timed(checkpoints.judge, folder)
    run, note = checkpoints.load_record(state)
    assert (run is None) == (note is not None)
    if run is None:
        assert judged.lacks == () and judged.notes and "is not a record this version reads" in judged.notes[0]


@SETTINGS
@given(data=contents)
def test_any_pending_record_never_proves_what_it_does_not_say(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("p") / "checkpoint-8"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"a file the save wrote")  # not only the package's own files
    (folder / checkpoints.PENDING).write_bytes(data)
    try:
        loaded = json.loads(data)
    except ValueError:
        loaded = None
    proven = _timed(checkpoints.own_cut, folder)
    says = isinstance(loaded, dict) and loaded.get("format") == 1 and type(loaded.get("format")) is int
    says = says and type(loaded.get("global_step")) is int and loaded["global_step"] == 8 and loaded.get("fresh") is True
    assert proven == says


@pytest.mark.parametrize("world", [10**7, 10**12, 2**63 + 5])
def test_a_marker_claiming_more_ranks_than_any_job_is_bad_input_answered_at_once(tmp_path, world):
    """Measured before the fix: 10**7 built 10**7 RNG names (12 s); 10**12 never returned."""
    folder = make_checkpoint(tmp_path, 8)
    marker = checkpoints.marker_content(folder, 8, 1, False)
    (folder / checkpoints.MARKER).write_text(json.dumps({**marker, "world_size": world}))
    judged = _timed(checkpoints.judge, folder)
    assert judged.lacks == () and not judged.marked
    why = (
        f"world_size {world} disagrees with the RNG files it lists (rng_state.pth)"
        if world <= checkpoints.MAX_WORLD
        else f"world_size {world!r} is not a number of ranks (1 to {checkpoints.MAX_WORLD})"
    )
    note = f"checkpoint-8/{checkpoints.MARKER} is not a commit marker this version reads ({why}): judged file by file"
    assert judged.notes == (note,)


def test_the_largest_world_a_marker_may_name_is_counted_from_the_listing_not_enumerated(tmp_path):
    folder = make_checkpoint(tmp_path, 8, world=2)
    (folder / "rng_state_1.pth").unlink()  # rank 0's is there, as its own writer wrote it
    marker = checkpoints.marker_content(folder, 8, checkpoints.MAX_WORLD, False)
    (folder / checkpoints.MARKER).write_text(json.dumps({**marker, "world_size": checkpoints.MAX_WORLD}))
    judged = _timed(checkpoints.judge, folder)
    world = checkpoints.MAX_WORLD
    assert judged.marked and judged.lacks == (
        f"rng_state_1.pth (rank 1 of {world})",
        f"rng_state_2.pth (rank 2 of {world})",
        f"rng_state_3.pth (rank 3 of {world})",
        f"and {world - 4} more ranks' RNG states",
    )


def test_a_step_written_as_a_string_is_named_as_what_it_is(tmp_path):
    """Measured before the fix: ``global_step: "60"`` gave "global_step 60, not 60"."""
    folder = make_checkpoint(tmp_path, 60)
    state = json.loads((folder / checkpoints.STATE).read_text())
    (folder / checkpoints.STATE).write_text(json.dumps({**state, "global_step": "60"}))
    assert checkpoints.missing(folder) == ["trainer_state.json (global_step '60', not 60)"]
    (folder / checkpoints.STATE).write_text(json.dumps(state))
    marker = checkpoints.marker_content(folder, 60, 1, False)
    (folder / checkpoints.MARKER).write_text(json.dumps({**marker, "global_step": "60"}))
    judged = checkpoints.judge(folder)
    assert judged.lacks == () and "global_step '60' is not a step" in judged.notes[0]


def test_a_fingerprint_of_the_wrong_type_is_not_a_record(tmp_path):
    folder = make_checkpoint(tmp_path, 8)
    state = json.loads((folder / checkpoints.STATE).read_text())
    state["stateful_callbacks"][checkpoints.RECORD]["attributes"]["fingerprint"] = ["not", "a", "mapping"]
    run, note = checkpoints.load_record(state)
    assert run is None and "fingerprint ['not', 'a', 'mapping'] is not an object" in note


def test_the_checkpoints_command_shows_the_notes(tmp_path, capsys):
    out = tmp_path / "out"
    folder = make_checkpoint(out, 8)
    (folder / checkpoints.MARKER).write_text("[1, 2")
    assert cli.main(["checkpoints", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"note: checkpoint-8/{checkpoints.MARKER} does not parse as JSON: judged file by file" in text
    assert Path(out / "checkpoint-8").is_dir()


def test_a_folder_holding_only_the_packages_own_files_is_its_own(tmp_path):
    """A kill between the folder's creation and its pending record: nothing in it but the package's own files."""
    folder = tmp_path / "checkpoint-8"
    folder.mkdir()
    assert checkpoints.own_cut(folder)  # empty
    (folder / f".{checkpoints.PENDING}.node-1.tmp").write_text("{")
    (folder / "savefix_preemption.json").write_text("{}")
    assert checkpoints.own_cut(folder)
    (folder / "rng_state_1.pth").write_bytes(b"another rank's")
    assert not checkpoints.own_cut(folder)
    (folder / "rng_state_1.pth").unlink()
    (folder / "sub").mkdir()
    assert not checkpoints.own_cut(folder)
