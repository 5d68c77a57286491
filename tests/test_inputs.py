"""Tests of triplet_audio.features.inputs: the one glob expansion.

`discover_inputs` (audio), `records.list_shards` (TFRecord shards),
`embed.input_kind` and `embeddings_io.resolve_paths` (embeddings) all expand
user paths through `expand_globs`; these tests pin what it means, and that
the readers agree on it. `discover_inputs` itself is tested in
test_extract.py.
"""

import os

import pytest

from triplet_audio.features import inputs


def _touch(root, *names):
    for name in names:
        path = os.path.join(str(root), name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "wb").close()


@pytest.fixture
def tree(tmp_path):
    _touch(tmp_path, "a.wav", "b.flac", "sub/c.wav", "sub/deep/d.wav",
           "odd[1]/e.wav", "odd[1]/f.txt")
    return str(tmp_path)


def _rel(root, paths):
    return [os.path.relpath(p, root) for p in paths]


def test_a_glob_gives_sorted_distinct_paths(tree):
    assert _rel(tree, inputs.expand_globs(os.path.join(tree, "*.*"))) == [
        "a.wav", "b.flac"]


def test_double_star_matches_any_depth(tree):
    got = _rel(tree, inputs.expand_globs(os.path.join(tree, "**", "*.wav")))
    assert got == ["a.wav", "odd[1]/e.wav", "sub/c.wav", "sub/deep/d.wav"]


def test_commas_only_when_asked(tree):
    spec = "%s, %s,," % (os.path.join(tree, "a.wav"),
                         os.path.join(tree, "sub", "*.wav"))
    assert _rel(tree, inputs.expand_globs(spec, split_commas=True)) == [
        "a.wav", "sub/c.wav"]
    assert inputs.expand_globs(spec) == []
    # The same file named twice is listed once.
    twice = "%s,%s" % (os.path.join(tree, "a.wav"), os.path.join(tree, "a*"))
    assert _rel(tree, inputs.expand_globs(twice, split_commas=True)) == [
        "a.wav"]


def test_a_directory_is_listed_with_its_name_taken_literally(tree):
    odd = os.path.join(tree, "odd[1]")
    assert _rel(tree, inputs.expand_globs(odd, directory_glob="*.wav")) == [
        os.path.join("odd[1]", "e.wav")]
    # Without directory_glob a directory stands for itself.
    assert inputs.expand_globs(odd) == []  # "[1]" is a wildcard there.
    sub = os.path.join(tree, "sub")
    assert inputs.expand_globs(sub) == [sub]


def test_keep_filters_and_no_match_is_empty(tree):
    got = inputs.expand_globs(os.path.join(tree, "**"), keep=os.path.isfile)
    assert "a.wav" in _rel(tree, got) and "sub" not in _rel(tree, got)
    assert inputs.expand_globs(os.path.join(tree, "nothing*")) == []


def test_is_glob_and_glob_root(tree):
    assert inputs.is_glob("a/*.wav") and inputs.is_glob("a/[ab].wav")
    assert inputs.is_glob("a?.wav") and not inputs.is_glob("a/b.wav")
    assert inputs.glob_root(os.path.join(tree, "sub", "**", "*.wav")) == (
        os.path.join(tree, "sub"))
    assert inputs.glob_root("/*.wav") == "/"


def test_recording_ids_keep_extensions_only_when_needed():
    assert inputs.recording_ids(["/r/a.wav", "/r/s/b.flac"], "/r") == [
        "a", "s/b"]
    assert inputs.recording_ids(["/r/a.wav", "/r/a.flac"], "/r") == [
        "a.wav", "a.flac"]


def test_discover_inputs_in_a_directory_with_wildcard_characters(tree):
    items, _ = inputs.discover_inputs(os.path.join(tree, "odd[1]"))
    assert [i.recording_id for i in items] == ["e"]
    with pytest.raises(inputs.ExtractError, match="^input: .* matches no"):
        inputs.discover_inputs(os.path.join(tree, "*.mp3"))
