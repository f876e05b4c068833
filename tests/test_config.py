import json

import pytest

from detector.config import PAPER_SCALES, make_config


def test_defaults_follow_the_paper_scales_and_cpu_preset():
    config = make_config()
    assert config.scales == PAPER_SCALES == (480, 576, 688, 864, 1200)
    assert config.preset == "cpu" and config.fc_width == 1024 and config.batch_size == 128
    assert config.fg_fraction == 0.25 and config.nms_iou == 0.3 and config.max_per_image == 100


def test_paper_preset_and_overrides_from_file_and_pairs(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"iterations": 50, "scales": [688]}))
    config = make_config("paper", {"iterations": "70", "flip": "false"}, path)
    assert config.fc_width == 4096 and config.lr == 1e-4
    assert config.scales == (688,)  # from the file
    assert config.iterations == 70  # explicit pair beats the file
    assert config.flip is False


@pytest.mark.parametrize("overrides, message", [
    ({"no_such_key": 1}, "unknown key"),
    ({"iterations": "many"}, "iterations"),
    ({"flip": "perhaps"}, "flip"),
    ({"scorer": "forest"}, "scorer"),
    ({"scales": "0"}, "scales"),
])
def test_bad_overrides_are_refused_by_name(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_config("cpu", overrides)


def test_unknown_preset_and_unreadable_file(tmp_path):
    with pytest.raises(ValueError, match="preset"):
        make_config("huge")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        make_config("cpu", None, bad)


def test_round_trip_through_dict():
    config = make_config("cpu", {"scales": "480 688"})
    values = config.to_dict()
    again = make_config(values.pop("preset"), values)
    assert again == config
