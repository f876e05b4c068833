import json

import pytest

from detector.config import LEGACY_KEYS, PAPER_SCALES, Config, config_from_dict, make_config


def test_defaults_follow_the_paper_scales_and_cpu_preset():
    config = make_config()
    assert config.scales == (688,) and config.test.scorer == "svm"  # every preset scores with the SVMs
    assert config.backbone == "efficientnet_lite2" and config.backbone_options == {"feature_stride": 16, "dilated": True}
    assert Config().scales == PAPER_SCALES == (480, 576, 688, 864, 1200)  # the base of every preset
    assert Config().backbone == "efficientnet_lite0" and Config().test.scorer == "svm"
    # another trunk drops the preset's trunk options
    assert make_config("cpu", {"backbone": "efficientnet_lite0"}).backbone_options == {}
    assert make_config("demo").backbone == "efficientnet_lite0"
    assert make_config("paper").test.scorer == make_config("demo").test.scorer == "svm"
    assert config.preset == "cpu" and config.fc_width == 1024 and config.finetune.batch_size == 128
    assert config.sampling.fg_fraction == 0.25 and config.test.nms_iou == 0.3 and config.test.max_per_image == 100
    assert config.svm.C == 1e-3 and config.svm.pos_weight == 2.0 and config.bbox.alpha == 1000.0


def test_paper_preset_and_overrides_from_file_and_pairs(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"finetune": {"iterations": 50}, "scales": [688]}))  # nested form
    config = make_config("paper", {"finetune.iterations": "70", "sampling.flip": "false"}, path)
    assert config.fc_width == 4096 and config.finetune.lr == 1e-4
    assert config.scales == (688,)  # from the file
    assert config.finetune.iterations == 70  # explicit pair beats the file
    assert config.sampling.flip is False


def test_section_values_reach_the_stage_objects():
    config = make_config("cpu", {"svm.C": "0.01", "svm.passes": 2, "bbox.alpha": 10, "seed": 3})
    assert config.svm.C == 0.01 and config.svm.passes == 2 and config.bbox.alpha == 10.0
    assert config.svm.seed == 3 and config.bbox.seed == 3  # the sections' seed follows the top-level one


@pytest.mark.parametrize("overrides, message", [
    ({"no_such_key": 1}, "unknown key"),
    ({"svm.no_such_key": 1}, "unknown key"),
    ({"finetune.iterations": "many"}, "iterations"),
    ({"sampling.flip": "perhaps"}, "flip"),
    ({"test.scorer": "forest"}, "scorer"),
    ({"scales": "0"}, "scales"),
    ({"svm.C": 0}, "C"),
    ({"finetune.lr": "nan"}, "finetune.lr"),
    ({"finetune.batch_size": 0}, "batch_size"),
    ({"finetune.checkpoint_every": 0}, "checkpoint_every"),
    ({"svm_c": 1}, "svm_c is now svm.C"),
    ({"mode": "rcnn"}, "mode is now feature_path"),
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
    config = make_config("demo", {"scales": "480 688", "svm.C": 0.5, "seed": 2})
    assert config_from_dict(config.to_dict()) == config
    assert config_from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.replace(fc_width=64).fc_width == 64 and config.replace(fc_width=64).svm.C == 0.5


def test_flat_config_of_old_model_files_is_upgraded():
    old = {"preset": "cpu", "svm_c": 0.02, "mode": "rcnn", "iterations": 7, "scales": [688], "flip": False,
           "proposal_mode": "fast", "rcnn_batch_size": 4, "scorer": "softmax"}
    config = config_from_dict(old)
    assert config.svm.C == 0.02 and config.feature_path == "rcnn" and config.finetune.iterations == 7
    assert config.sampling.flip is False and config.rcnn.batch_size == 4 and config.test.scorer == "softmax"
    assert set(LEGACY_KEYS.values()) <= set(make_config().flat())  # every new name exists


def test_the_cpu_presets_test_scales_go_with_its_training_scales(tmp_path):
    cpu = make_config()
    assert cpu.test.scales == cpu.svm.scales == (480, 576, 864) and cpu.scales == (688,)
    assert cpu.test.scorer == "svm"
    for other in ("demo", "paper"):
        assert make_config(other).test.scales == make_config(other).svm.scales == ()
    # other training scales (typed, or from a file) test and train the SVMs at themselves unless
    # test.scales / svm.scales are given too
    five = make_config("cpu", {"scales": "480 576 688 864 1200"})
    assert five.scales == PAPER_SCALES and five.test.scales == five.svm.scales == ()
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"scales": [576]}))
    assert make_config("cpu", None, path).test.scales == make_config("cpu", None, path).svm.scales == ()
    same = make_config("cpu", {"scales": "688"})  # the preset's own scales
    assert same.test.scales == same.svm.scales == (480, 576, 864)
    both = make_config("cpu", {"scales": "576", "test.scales": "480 864", "svm.scales": "480"})
    assert both.scales == (576,) and both.test.scales == (480, 864) and both.svm.scales == (480,)
    # a copy with other training scales keeps the test scales it had (they are part of its values)
    assert make_config().replace(scales=(576,)).test.scales == (480, 576, 864)
    assert config_from_dict(make_config().to_dict()) == make_config()
    # a config written before svm.scales existed trained its SVMs at its training scales
    older = {k: v for k, v in make_config().flat().items() if k != "svm.scales"}
    assert config_from_dict(older).svm.scales == ()
    for bad in ("0 480", "3000"):
        with pytest.raises(ValueError, match="test.scales"):
            make_config("cpu", {"test.scales": bad})
        with pytest.raises(ValueError, match="scales"):
            make_config("cpu", {"svm.scales": bad})


def test_model_files_from_before_test_scales_test_at_their_training_scales():
    written = make_config().to_dict()
    del written["test"]["scales"]
    config = config_from_dict(written)
    assert config.scales == (688,) and config.test.scales == ()
    assert config_from_dict(written, {"test.scales": (480, 864)}).test.scales == (480, 864)
