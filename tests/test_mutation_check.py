"""Tests of tools/mutation_check.py (the list of mutations and its mechanics).

Fast: no pytest subprocess, no TensorFlow. The snippet test fails when an
edit to a mutated file changes a line a mutation targets: update that
mutation's "find" (and "replace") in tools/mutation_check.py.
"""

import importlib.util
import os
import shlex

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO_ROOT, "tools", "mutation_check.py")


def _load_tool():
    spec = importlib.util.spec_from_file_location("mutation_check", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mc = _load_tool()
MUTATIONS = mc.load_mutations()

# The five bugs the review named must stay on the list.
REVIEW_MUTATIONS = ("ckpt_no_optimizer", "qbe_dot", "mel_upper_8000",
                    "log_offset_0001", "proximity_dt_inclusive")


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def test_ids_are_unique_and_the_list_is_complete():
    ids = [m.id for m in MUTATIONS]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 30
    assert set(REVIEW_MUTATIONS) <= set(ids)
    areas = {m.area for m in MUTATIONS}
    assert areas == {"loss", "samplers", "frontend", "evaluation", "training"}


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.id)
def test_snippet_occurs_exactly_once(mutation):
    with open(os.path.join(REPO_ROOT, mutation.file), encoding="utf-8") as f:
        text = f.read()
    assert text.count(mutation.find) == 1, (
        "%s: update this mutation in tools/mutation_check.py" % mutation.id)
    assert mutation.find != mutation.replace


def test_apply_and_restore_round_trip_the_bytes(tmp_path):
    root = str(tmp_path)
    for mutation in MUTATIONS:
        target = os.path.join(root, mutation.file)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(_read(os.path.join(REPO_ROOT, mutation.file)))
        before = _read(target)
        original = mc.apply_mutation(root, mutation)
        assert original == before
        mutated = _read(target).decode("utf-8")
        assert mutated != before.decode("utf-8")
        assert mutation.find not in mutated or mutation.find in (
            mutation.replace)
        assert mutation.replace in mutated
        mc.restore(root, mutation, original)
        assert _read(target) == before


def _fake(**overrides):
    entry = dict(id="fake", area="loss", file="m.py", find="a = 1",
                 replace="a = 2", why="test", tests=["tests/test_x.py"])
    entry.update(overrides)
    return mc.load_mutations([entry])[0]


@pytest.mark.parametrize("content,times", [("b = 1\n", 0),
                                           ("a = 1\na = 1\n", 2)])
def test_missing_or_ambiguous_snippet_is_an_error(tmp_path, content, times):
    path = tmp_path / "m.py"
    path.write_text(content)
    mutation = _fake()
    with pytest.raises(mc.MutationError, match="occurs %d times" % times):
        mc.apply_mutation(str(tmp_path), mutation)
    assert path.read_text() == content  # untouched
    with pytest.raises(mc.MutationError):
        mc.check_all(str(tmp_path), [mutation])


def test_invalid_entries_are_rejected():
    entry = dict(id="x", area="loss", file="m.py", find="a", replace="b",
                 why="w", tests=["tests/t.py"])
    with pytest.raises(mc.MutationError, match="duplicate"):
        mc.load_mutations([entry, dict(entry)])
    with pytest.raises(mc.MutationError, match="equals"):
        mc.load_mutations([dict(entry, replace="a")])
    with pytest.raises(mc.MutationError, match="empty test selection"):
        mc.load_mutations([dict(entry, tests=[])])
    with pytest.raises(mc.MutationError, match="missing fields"):
        mc.load_mutations([{"id": "y"}])


def test_selections_name_test_files_and_parse():
    for mutation in MUTATIONS:
        for selection in mutation.tests:
            args = shlex.split(selection)
            paths = [a for a in args if mc.path_of(a)]
            assert paths, (mutation.id, selection)
            assert all(p.startswith("tests/") for p in paths)
            if "-k" in args:  # one quoted expression after -k
                assert args.index("-k") == len(args) - 2, selection


def test_missing_test_files_are_left_out_of_a_selection(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text("")
    mutation = _fake(tests=['tests/test_a.py tests/test_b.py -k "x or y"',
                            "tests/test_c.py::test_z"])
    runs, missing = mc.selection_runs(str(tmp_path), mutation)
    assert runs == [["tests/test_a.py", "-k", "x or y"]]
    assert missing == ["tests/test_b.py", "tests/test_c.py"]


def test_markdown_report_lists_survivors():
    results = [dict(id="m1", file="f.py", why="a | b", result="killed",
                    seconds=1.0, detail="t::x", missing=[]),
               dict(id="m2", file="f.py", why="c", result="survived",
                    seconds=2.5, detail="", missing=["tests/n.py"])]
    text = mc.markdown_report(results, 3.5)
    assert "| m1 | f.py | a \\| b | killed | 1.0 | t::x |" in text
    assert "**survived**" in text and "missing: tests/n.py" in text
    assert "* `m2` (f.py): c" in text
    assert mc.summary_counts(results) == {"killed": 1, "survived": 1,
                                          "timeout": 0, "error": 0}
