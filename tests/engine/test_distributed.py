"""The pipeline on a 2-process gloo group (``tests/spawn_ranks.py``) against one process, tiny data.

Each spawned rank runs one thread, as ``torchrun`` starts them."""
import json
from pathlib import Path

import pytest
import torch
from conftest import TINY as BASE_TINY
from spawn_ranks import RanksFailed, run_ranks

import detector.head.finetune as finetune_module
from detector.config import make_config
from detector.core import distributed
from detector.core.paths import cache_root
from detector.data.demo import make_demo_dataset
from detector.data.voc import load_voc
from detector.engine.test import test_detector
from detector.engine.train import train_detector, training_windows
from detector.features.backbones import build_backbone
from detector.features.convmaps import ConvMapCache, ConvMapProvider
from detector.features.spp import SpatialPyramidPooling
from detector.head.fc import SPPHead
from detector.head.finetune import SlicedDropout, finetune, read_finetune_checkpoint
from detector.head.window_bank import PoolingContext
from detector.model.detector import conv_map_folder, load_model

# dropout on (0.5): the ranks apply the masks one process draws (detector.head.finetune.SlicedDropout)
DDP_TINY = {**BASE_TINY, "dropout": 0.5, "finetune.iterations": 6, "finetune.lr_steps": (4,),
            "finetune.checkpoint_every": 3, "finetune.batch_size": 16}


def _result_files(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.glob("comp4_det_*.txt"))}


def _test_on_ranks(root: str, run: str, out: str) -> None:
    model = load_model(Path(run) / "model.pt", "cpu", cache_root(root))
    metrics = test_detector(model, load_voc(root, "test", model.classes), Path(out), progress=False)
    Path(out, f"returned{distributed.rank()}.json").write_text(json.dumps(metrics["mAP"]))


def test_two_ranks_detect_exactly_as_one(tiny_trained, tmp_path, monkeypatch):
    root, run, cache = tiny_trained
    monkeypatch.setenv("SPPNET_CACHE", str(cache))
    model = load_model(run / "model.pt", "cpu", cache_root(root))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank: 2 threads sum the fc products in another order (8th digit)
    try:
        one = test_detector(model, load_voc(root, "test", model.classes), tmp_path / "one", progress=False)
    finally:
        torch.set_num_threads(threads)
    run_ranks(_test_on_ranks, 2, str(root), str(run), str(tmp_path / "two"))
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert _result_files(tmp_path / "one") and _result_files(tmp_path / "two") == _result_files(tmp_path / "one")
    coco = [(tmp_path / name / "detections_coco.json").read_text() for name in ("one", "two")]
    assert coco[0] == coco[1]
    assert two["mAP"] == one["mAP"] and two["ap"] == one["ap"] and two["skipped_images"] == 0
    assert json.loads((tmp_path / "two" / "returned1.json").read_text()) == one["mAP"]  # every rank gets rank 0's


def _finetune_head(root: str, checkpoint: str, overrides: dict, before=lambda: None) -> SPPHead:
    """A head fine-tuned on the tiny demo's train split (``before()`` runs just before ``finetune``)."""
    config = make_config("cpu", overrides)
    dataset = load_voc(root, "train")
    backbone = build_backbone(config.backbone)
    spp = SpatialPyramidPooling(backbone.levels)
    provider = ConvMapProvider(backbone, ConvMapCache(conv_map_folder(cache_root(root), backbone, config)),
                               config.max_side)
    head = SPPHead(spp.output_size(backbone.channels), config.fc_width, len(dataset.classes), config.dropout)
    context = PoolingContext(provider, spp, backbone.geometry, config.scales)
    train = training_windows(dataset, config, False)
    before()
    finetune(head, context, train, dataset.classes, config, Path(checkpoint), progress=False)
    return head


def _finetune_on_ranks(root: str, checkpoint: str, heads: str, kill_after_first_checkpoint: bool) -> None:
    if kill_after_first_checkpoint and distributed.is_main():
        saved = finetune_module.save_checkpoint

        def save_then_die(path, state):
            saved(path, state)
            raise RuntimeError("killed after the first checkpoint")

        finetune_module.save_checkpoint = save_then_die
    head = _finetune_head(root, checkpoint, DDP_TINY)
    torch.save(head.state_dict(), Path(heads) / f"rank{distributed.rank()}.pt")


def test_ddp_finetuning_equals_one_process_and_resumes_on_one(tiny_demo, tmp_path):
    """Two ranks of 8 windows each = one process on the 16-window batch; a checkpoint written by
    two ranks resumes on one."""
    one = _finetune_head(str(tiny_demo), str(tmp_path / "one.pt"), DDP_TINY).state_dict()
    run_ranks(_finetune_on_ranks, 2, str(tiny_demo), str(tmp_path / "two.pt"), str(tmp_path), False)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for name, value in one.items():
        torch.testing.assert_close(ranks[0][name], value, rtol=1e-5, atol=1e-6)
        assert torch.equal(ranks[0][name], ranks[1][name])  # every rank holds the same head
    two_state = read_finetune_checkpoint(tmp_path / "two.pt")
    assert two_state["iteration"] == 6 and two_state["stage"] == read_finetune_checkpoint(tmp_path / "one.pt")["stage"]

    with pytest.raises(RanksFailed, match="killed after the first checkpoint"):
        run_ranks(_finetune_on_ranks, 2, str(tiny_demo), str(tmp_path / "killed.pt"), str(tmp_path), True)
    assert read_finetune_checkpoint(tmp_path / "killed.pt")["iteration"] == 3
    resumed = _finetune_head(str(tiny_demo), str(tmp_path / "killed.pt"), DDP_TINY).state_dict()
    assert read_finetune_checkpoint(tmp_path / "killed.pt")["iteration"] == 6
    for name, value in one.items():
        torch.testing.assert_close(resumed[name], value, rtol=1e-5, atol=1e-6)


def test_sliced_dropout_applies_the_masks_of_one_process():
    x = torch.randn(16, 64)
    torch.manual_seed(3)
    one = torch.nn.functional.dropout(x, 0.5, training=True)
    two = torch.empty_like(one)
    for rank in range(2):
        torch.manual_seed(3)
        two[rank::2] = SlicedDropout(0.5, rank, 2).train()(x[rank::2])
    assert torch.equal(one, two)


def test_batch_that_does_not_split_over_the_ranks_is_refused(tiny_demo, tmp_path, monkeypatch):
    def as_on_two_ranks():  # refused before any work, so no process group is needed
        monkeypatch.setattr(distributed, "world_size", lambda: 2)

    with pytest.raises(ValueError, match="finetune.batch_size=15 does not split evenly over 2 processes"):
        _finetune_head(str(tiny_demo), str(tmp_path / "a.pt"), {**DDP_TINY, "finetune.batch_size": 15},
                       as_on_two_ranks)


def _train_on_ranks(root: str, out: str) -> None:
    """Train every stage, recording how many selective searches and conv maps this rank computed."""
    import detector.features.convmaps as convmaps_module
    import proposals.cache as proposal_cache_module

    counts = {"searched": 0, "mapped": 0}
    search, compute_map = proposal_cache_module.selective_search, convmaps_module.compute_conv_map

    def counted_search(*args, **kwargs):
        counts["searched"] += 1
        return search(*args, **kwargs)

    def counted_map(*args):
        counts["mapped"] += 1
        return compute_map(*args)

    proposal_cache_module.selective_search, convmaps_module.compute_conv_map = counted_search, counted_map
    train_detector(load_voc(root, "train"), make_config("cpu", DDP_TINY), Path(out), progress=False)
    Path(out, f"counts{distributed.rank()}.json").write_text(json.dumps(counts))


def test_two_ranks_train_the_model_of_one(tmp_path, monkeypatch):
    """Every stage on two ranks, on a fresh cache: each image searched and mapped by one rank; then
    one process on the same cache: the same SVMs and regressors to float tolerance, the same mAP."""
    monkeypatch.setenv("SPPNET_CACHE", str(tmp_path / "cache"))
    root = make_demo_dataset(tmp_path / "demo", n_train=5, n_test=4, seed=3)
    run_ranks(_train_on_ranks, 2, str(root), str(tmp_path / "two"))
    counts = [json.loads((tmp_path / "two" / f"counts{r}.json").read_text()) for r in range(2)]
    assert [c["searched"] for c in counts] == [3, 2]  # images 0, 2, 4 and 1, 3
    assert [c["mapped"] for c in counts] == [3 * 2, 2 * 2]  # one scale, both flips
    for name in ("counts0.json", "counts1.json"):
        (tmp_path / "two" / name).unlink()
    train_detector(load_voc(root, "train"), make_config("cpu", DDP_TINY), tmp_path / "one", progress=False)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    one = load_model(tmp_path / "one" / "model.pt", "cpu", cache_root(root))
    two = load_model(tmp_path / "two" / "model.pt", "cpu", cache_root(root))
    torch.testing.assert_close(torch.from_numpy(two.svm.weights), torch.from_numpy(one.svm.weights),
                               rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(torch.from_numpy(two.svm.biases), torch.from_numpy(one.svm.biases),
                               rtol=1e-3, atol=1e-4)
    test = load_voc(root, "test", one.classes)
    m_one = test_detector(one, test, tmp_path / "test_one", progress=False)
    m_two = test_detector(two, test, tmp_path / "test_two", progress=False)
    assert m_two["mAP"] == pytest.approx(m_one["mAP"], abs=0.005)
    history = [json.loads(line) for line in (tmp_path / "two" / "history.jsonl").read_text().splitlines()]
    assert [row["stage"] for row in history].count("run") == 1  # one record, written by rank 0
