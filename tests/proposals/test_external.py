"""Proposals from elsewhere: the documented formats are read, bad boxes and missing ids refused by name."""
import json

import numpy as np
import pytest

from detector.core.records import ImageRecord
from proposals.external import ExternalProposals, load_external_proposals, load_proposals


def _records():
    return [ImageRecord("a", "a.jpg", 100, 80), ImageRecord("b/c", "b.jpg", 50, 40)]


def test_one_json_file_and_per_image_files_give_the_same_boxes(tmp_path):
    boxes = {"a": [[0, 0, 100, 80], [10.5, 5, 20, 30]], "b/c": [[1, 2, 3, 4]]}
    (tmp_path / "all.json").write_text(json.dumps(boxes))
    folder = tmp_path / "per_image"
    folder.mkdir()
    (folder / "a.json").write_text(json.dumps({"boxes": boxes["a"]}))
    np.savez(folder / "b%2Fc.npz", boxes=np.array(boxes["b/c"], np.float32))  # escaped id
    for source in (tmp_path / "all.json", folder):
        loaded = load_external_proposals(source, _records())
        assert loaded.keys() == boxes.keys()
        for image_id, expected in boxes.items():
            assert loaded[image_id].dtype == np.float32
            np.testing.assert_array_equal(loaded[image_id], np.array(expected, np.float32))
    # the one entry point dispatches on source
    assert np.array_equal(load_proposals(tmp_path, _records(), source=folder)["a"], loaded["a"])


@pytest.mark.parametrize("bad, problem", [
    ([[10, 10, 5, 20]], "empty"),
    ([[0, 0, 101, 80]], "outside the 100x80 image"),
    ([[-1, 0, 10, 10]], "outside"),
    ([[0, 0, float("nan"), 10]], "non-finite"),
    ([[0, 0, 10]], "x1, y1, x2, y2"),
])
def test_a_bad_box_is_refused_naming_the_file_and_the_image_id(tmp_path, bad, problem):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"a": [[0, 0, 5, 5], *bad], "b/c": []}))
    with pytest.raises(ValueError, match=problem) as error:
        load_external_proposals(path, _records())
    assert str(path) in str(error.value) and "'a'" in str(error.value)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.json").write_text(json.dumps([[0, 0, 5, 5], *bad]))
    with pytest.raises(ValueError, match=problem) as error:
        ExternalProposals(folder).load("a", 100, 80)
    assert str(folder / "a.json") in str(error.value)


def test_missing_ids_and_unreadable_files_are_named(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"a": []}))
    with pytest.raises(ValueError, match="no entry for image id 'b/c'"):
        load_external_proposals(path, _records())
    assert load_external_proposals(path, _records()[:1])["a"].shape == (0, 4)
    with pytest.raises(ValueError, match="has no b%2Fc.json or .npz"):
        ExternalProposals(tmp_path).load("b/c", 50, 40)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json is not readable JSON"):
        ExternalProposals(tmp_path / "broken.json")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ExternalProposals(tmp_path / "nowhere")


def test_an_image_without_proposals_is_said_in_a_warning(tmp_path, caplog):
    from proposals.external import ExternalProposals
    (tmp_path / "boxes.json").write_text('{"000001": []}')
    boxes = ExternalProposals(tmp_path / "boxes.json").load("000001", 100, 80)
    assert boxes.shape == (0, 4)
    assert f"proposals file {tmp_path / 'boxes.json'}, image id '000001': no proposals" in caplog.text
