"""Training every stage of the detector, each skipped when its cached output is complete.

Stages: proposals (per-image cache) -> conv maps (per image, scale and flip) -> fine-tuning
(checkpoint ``finetune.pt``, resumes) -> SVMs with hard negative mining and box regressors
(``classifiers.pt``) -> ``model.pt``.  The SVMs see fc7 features computed image by image from
the cached maps and never all windows at once; the box regressors are fed during the SVMs'
first pass from the same pooled features, so no window is pooled twice.  In R-CNN mode
(``config.feature_path == "rcnn"``) there are no conv maps: every stage warps its windows and runs the
trunk on each (``detector.features.rcnn``).

Before any long work the run checks the device, the trunk name, that ``out_dir`` and the dataset's
cache are writable and that the smallest scale gives the trunk a map (``detector.engine.stages``).
Stage outputs are reused only when their provenance records match (``detector.engine.stages``,
policies auto / resume / force).  An image whose conv maps cannot be made (decode or trunk error)
is named in the log and left out of every later stage; the summary counts it.

Several processes (``torchrun``, ``detector.core.distributed``): every rank runs these stages on
the same arguments.  Proposals and conv maps: each rank computes its shard of the images into
the shared caches, then all read them.  Fine-tuning: DistributedDataParallel on the same total
mini-batch (``detector.head.finetune``).  SVMs and box regressors: the fc7 features are computed
by all ranks together and every rank mines the same stream (``train_classifiers``).  Rank 0 alone
writes the run's files (run log, checkpoints, ``classifiers.pt``, ``model.pt``, summary).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from bbox_regression.ridge import BoxRegressor, BoxRegressorTrainer
from bbox_regression.training_pairs import select_training_pairs
from detector.config import STOP_AFTER, Config
from detector.core import distributed
from detector.core.boxes import flip_boxes
from detector.core.folders import CALIBRATION_DIR, CLASSIFIERS_FILE, FINETUNE_FILE, MODEL_FILE, SUMMARY_FILE, run_state
from detector.core.integrity import seal
from detector.core.interrupt import set_stage
from detector.core.io import save_checkpoint, write_json_atomic
from detector.core.paths import cache_root
from detector.core.provenance import training_data_digest
from detector.core.records import ImageRecord
from detector.core.runtime import (
    check_device,
    mapping_large_blocks,
    peak_rss_mib,
    release_freed_memory,
    releasing_freed_memory,
)
from detector.core.timing import StageTimer
from detector.core.windows import ImageWindows, build_windows
from detector.data.voc import HOLDOUT_PARTS, VOCDataset, load_voc
from detector.engine.calibrate import fit_on_folder
from detector.engine.run_log import RunLog
from detector.engine.stages import (
    POLICIES,
    check_backbone_name,
    check_scales,
    check_writable,
    classifiers_provenance,
    reusable_classifiers,
)
from detector.engine.test import test_detector
from detector.features.convmaps import backbone_fingerprint
from detector.features.rcnn import RCNNFeatures
from detector.head.finetune import finetune
from detector.head.window_bank import PoolingContext
from detector.model.calibration import ScoreCalibration
from detector.model.detector import DetectorModel, build_detector, load_model, save_model
from detector.model.features import WindowFeatures, window_features
from proposals.external import load_proposals
from svm.feature_scale import estimate_feature_scale
from svm.features import FeatureReplay, ImageFeatures
from svm.mining import HardNegativeMiner, SVMModel, train_svms

log = logging.getLogger(__name__)


def training_windows(dataset: VOCDataset, config: Config, progress: bool = True) -> list[ImageWindows]:
    """Proposals of every image (selective search, computed in parallel and cached, or those of
    ``proposals.source``) stacked under its GT boxes."""
    proposals = load_proposals(dataset.root, dataset.records, config.proposals.method, config.proposals.max_side,
                               config.proposals.workers, progress, config.proposals.source)
    return [build_windows(r, proposals[r.image_id]) for r in dataset.records if r.image_id in proposals]


def image_features(model: DetectorModel, record: ImageRecord, boxes: np.ndarray, stage: str,
                   flip: bool = False, scales: Sequence[int] | None = None) -> WindowFeatures | None:
    """Features of one image's windows (of its mirror image with ``flip``, the boxes in its
    coordinates; each at its best scale among ``scales``, None: the training scales), or None
    (logged, naming the file) when this image fails; an ``OSError`` (an unwritable cache) stops
    the run, its message naming the path."""
    try:
        return window_features(model, record, boxes, StageTimer(), flip=flip, scales=scales)
    except OSError:
        raise
    except Exception as error:  # this image only (decode, trunk or pooling failure)
        log.error("%s: skipping image %s (%s): %s", stage, record.image_id, record.path, error)
        return None


def svm_scales(config: Config) -> tuple[int, ...]:
    """The scales the SVM stage pools its windows at: ``svm.scales``, or the training ``scales``."""
    return tuple(config.svm.scales) or tuple(config.scales)


def svm_feature_scale(model: DetectorModel, train: Sequence[ImageWindows], rng: np.random.Generator,
                      num_images: int = 20, per_image: int = 100) -> float:
    """Scale that gives the SVMs' features (fc7 or pool5) a mean L2 norm of 20, from a sample of
    training windows (under ``torchrun`` the sampled images are split across ranks and every rank
    gets them all)."""
    plan, scales = [], svm_scales(model.config)
    for i in rng.choice(len(train), min(num_images, len(train)), replace=False):
        plan.append((train[i], rng.choice(len(train[i].boxes), min(per_image, len(train[i].boxes)), replace=False)))

    def sample_features(item: tuple[ImageWindows, np.ndarray]) -> np.ndarray | None:
        windows, rows = item
        features = image_features(model, windows.record, windows.boxes[rows], "SVM feature scale", scales=scales)
        return None if features is None else features.window_svm_input(model.config.svm.features).float().numpy()

    sample = [rows for _, rows in distributed.ordered_stream(plan, sample_features) if rows is not None]
    if not sample:
        raise ValueError("SVM feature scale: no sampled training image gave features (see the errors above)")
    return estimate_feature_scale(np.concatenate(sample))


class SizedPass:
    """One pass over the training images, sized so that the miner's progress bar has a total."""

    def __init__(self, make: Callable[[], Iterator[ImageFeatures]], count: int) -> None:
        self.make, self.count = make, count

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[ImageFeatures]:
        return self.make()


def train_classifiers(model: DetectorModel, train: Sequence[ImageWindows], progress: bool = True,
                      on_retrain: Callable[[dict], None] | None = None
                      ) -> tuple[SVMModel, BoxRegressorTrainer, dict]:
    """Per-class SVMs and box regressors (``mine_classifiers`` without its miner)."""
    return mine_classifiers(model, train, progress, on_retrain)[:3]


def mine_classifiers(model: DetectorModel, train: Sequence[ImageWindows], progress: bool = True,
                     on_retrain: Callable[[dict], None] | None = None, replay: FeatureReplay | None = None
                     ) -> tuple[SVMModel, BoxRegressorTrainer, dict, HardNegativeMiner]:
    """Per-class SVMs (hard negative mining) on fc7 (or pool5, ``svm.features``) and box regressors
    on pooled conv5.

    Several processes (``torchrun``): computing the fc7 features of every window of every image
    (most of this stage's time) is split across ranks by ``distributed.ordered_stream``, which
    hands every rank every image's features in the order of ``train``.  Every rank then runs the
    same deterministic mining on the same stream, so the hard-negative caches (enter above
    ``svm.hard_threshold``, evicted below ``svm.evict_threshold``, retrain every
    ``svm.retrain_every`` additions) and the SVMs are the same on every rank without any exchange
    of caches; one rank is exactly the one-process run, and N ranks differ from it only by the
    float rounding of fc7 computed in another process.  The box regressors get the same stream's
    pooled features of their training pairs in the first pass.  A round of the stream is 4 images
    per rank with fc7 features, 1 with pool5 (the ranks wait on each other once per round; each
    holds the round's features of all ranks, e.g. 2 ranks x 4 x about 14 MB for a VOC image at fc
    width 1024).  Returned last: the miner, its final caches and per-pass models kept for inspection
    (``HardNegativeMiner.refit``, ``pass_models``).  ``replay``: the negatives' stream is recorded
    there on its first pass and read back on every later pass and call (several SVM settings mined on
    the same features: ``choose_svm_c.py --grid``; the box regressors are fed by the recording call
    only, and every pass reads the features rounded to float16)."""
    config = model.config
    scale = svm_feature_scale(model, train, np.random.default_rng(config.seed))
    stream = ClassifierStream(model, train, BoxRegressorTrainer(config.bbox, model.classes), replay)
    miner = HardNegativeMiner(len(model.classes), scale, config.svm, model.classes, on_retrain)
    svm = train_svms(lambda: SizedPass(stream.one_pass, len(train)), len(model.classes), scale, config.svm,
                     progress=progress and distributed.is_main(), miner=miner,
                     positives=lambda: SizedPass(stream.positives_pass, len(stream.with_gt)))
    return svm, stream.regression, svm.training_stats or {}, miner


class ClassifierStream:
    """The features the SVM stage reads, image by image: every window's (negatives, in passes), the
    positives' (a pass of their own) and, in the first pass, the box regressors' training pairs
    (``mine_classifiers``)."""

    def __init__(self, model: DetectorModel, train: Sequence[ImageWindows], regression: BoxRegressorTrainer,
                 replay: FeatureReplay | None) -> None:
        self.model, self.train, self.regression, self.replay = model, train, regression, replay
        self.config = model.config
        self.scales = svm_scales(self.config)
        self.passes_started = 0
        flips = (False, True) if self.config.svm.flip_positives else (False,)
        self.with_gt = [(w, flip) for w in train if len(w.record.boxes) for flip in flips]

    def one_image(self, windows: ImageWindows, feed_regression: bool) -> tuple[ImageFeatures, tuple | None] | None:
        """One image's SVM features (and its regression pairs with their pooled features), or None."""
        record = windows.record
        features = image_features(self.model, record, windows.boxes, "SVMs", scales=self.scales)
        if features is None:
            return None
        pairs = None
        if feed_regression:
            rows, _ = select_training_pairs(windows.boxes, record.boxes, record.labels)
            pairs = (rows, features.window_pooled(rows).numpy())
        return ImageFeatures(record.image_id, features.window_svm_input(self.config.svm.features).float().numpy(),
                             windows.boxes, record.boxes, record.labels, record.difficult), pairs

    def one_pass(self) -> Iterator[ImageFeatures]:
        """A pass over every image's windows (recorded once and replayed, with ``replay``)."""
        if self.replay is None:
            return self.computed_pass()
        return self.replay.replay() if self.replay.complete else self.replay.record(self.computed_pass())

    def computed_pass(self) -> Iterator[ImageFeatures]:
        """A pass computing every image's features; the first feeds the box regressors."""
        feed_regression = self.passes_started == 0
        self.passes_started += 1
        per_round = 4 if self.config.svm.features == "fc7" else 1  # pool5 rows are 16x wider than fc7's
        stream = distributed.ordered_stream(self.train, lambda w: self.one_image(w, feed_regression),
                                            per_round=per_round)
        for windows, result in releasing_freed_memory(stream):
            if result is None:
                continue
            image, pairs = result
            if pairs is not None:
                rows, pooled = pairs
                self.regression.add(pooled, windows.boxes[rows], windows.record.boxes, windows.record.labels)
            yield image

    def one_image_positives(self, item: tuple[ImageWindows, bool]) -> ImageFeatures | None:
        """The SVM features of one image's positive windows alone (its GT boxes, and with
        ``svm.pos_iou`` < 1 the proposals that close to one; a fraction of its windows), or of its
        mirror image's (``svm.flip_positives``; id ``<id>_flip``), each row a "GT" row of its class."""
        windows, flip = item
        record = windows.record
        rows = windows.near_gt(self.config.svm.pos_iou)
        labels = windows.gt_labels[rows]
        boxes = np.concatenate([record.boxes, windows.boxes[rows]]).astype(np.float32)
        boxes = flip_boxes(boxes, record.width) if flip else boxes
        features = image_features(self.model, record, boxes, "SVM positives", flip=flip, scales=self.scales)
        if features is None:
            return None
        return ImageFeatures(record.image_id + ("_flip" if flip else ""),
                             features.window_svm_input(self.config.svm.features).float().numpy(), boxes, boxes,
                             np.concatenate([record.labels, labels]),
                             np.concatenate([record.difficult, np.zeros(len(rows), dtype=bool)]))

    def positives_pass(self) -> Iterator[ImageFeatures]:
        """A pass over the positives of every image with GT boxes."""
        for _, result in distributed.ordered_stream(self.with_gt, self.one_image_positives, per_round=16):
            if result is not None:
                yield result


def train_detector(dataset: VOCDataset, config: Config, out_dir: Path, progress: bool = True,
                   policy: str = "auto", stop_after: str | None = None) -> Path:
    """Run every training stage for ``dataset``; returns the path of the written ``model.pt``
    (``policy``: auto, resume or force, see ``detector.engine.stages``).  The run's config, log and
    history are kept in ``out_dir`` (``detector.engine.run_log``).  ``stop_after="finetune"`` ends
    after fine-tuning: the model has neither SVMs nor box regressors and scores with the fc8
    softmax (quick comparisons of fine-tuning settings)."""
    if stop_after is not None and stop_after not in STOP_AFTER:
        raise ValueError(f"stop_after must be one of {STOP_AFTER} or None, not {stop_after!r}")
    if config.fc6_rank is not None:
        raise ValueError(f"fc6_rank={config.fc6_rank}: training needs the full fc6; compress the "
                         f"trained model with tools/compress_net.py")
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, not {policy!r}")
    check_device(config.device)
    check_backbone_name(config.backbone)
    check_writable([out_dir, cache_root(dataset.root)])
    progress = progress and distributed.is_main()
    with RunLog(out_dir, config, dataset.classes, active=distributed.is_main()) as history:
        return _train_stages(dataset, config, Path(out_dir), progress, policy, history, stop_after)


def _train_stages(dataset: VOCDataset, config: Config, out_dir: Path, progress: bool, policy: str,
                  history: RunLog, stop_after: str | None = None) -> Path:
    """The stages of ``train_detector``, recording progress in ``history``."""
    torch.manual_seed(config.seed)
    timings: dict[str, float] = {}
    peak_rss: dict[str, float] = {}  # MiB, the peak so far at the end of each stage

    def end_stage(name: str, began: float) -> None:
        """Record a stage's seconds and the peak RSS so far, then hand the freed heap back."""
        timings[name] = time.perf_counter() - began
        peak_rss[name] = peak_rss_mib()
        release_freed_memory()

    start = time.perf_counter()
    set_stage("proposals")
    model = build_detector(config, dataset.classes, cache_root(dataset.root))
    backbone, spp, provider = model.backbone, model.spp, model.conv_maps
    check_scales(backbone, config.scales)
    train = training_windows(dataset, config, progress)
    skipped = {"loader": dataset.skipped, "proposals": len(dataset.records) - len(train)}
    if not train:
        raise ValueError(f"no usable training image in {dataset.root} split {dataset.split}")
    end_stage("proposals", start)

    stage = time.perf_counter()
    set_stage("conv maps")
    map_stats = {"bytes_per_image": 0.0}
    if config.feature_path == "spp":
        train, map_stats = _conv_map_stage(model, train, config, progress, stop_after)
        skipped["conv_maps"] = map_stats["failed"]
        if not train:
            raise ValueError(f"no training image of {dataset.root} split {dataset.split} gave conv maps")
    end_stage("conv_maps", stage)

    rcnn = RCNNFeatures.from_config(backbone, spp, config) if config.feature_path == "rcnn" else None
    context = PoolingContext(provider, spp, backbone.geometry, tuple(config.scales),
                             normalise=backbone.pretrained_fc is None, rcnn=rcnn)
    stage = time.perf_counter()
    set_stage("fine-tuning")
    if config.finetune.iterations == 0 and backbone.pretrained_fc is None:
        log.warning("finetune.iterations=0: the fc layers keep their random initialisation (this trunk has no "
                    "pretrained fc), so the SVMs and box regressors train on random features")
    finetune_stats = finetune(model.head, context, train, dataset.classes, config,
                              out_dir / FINETUNE_FILE, progress, policy, history.finetune)
    end_stage("finetune", stage)

    classifiers_path = out_dir / CLASSIFIERS_FILE
    stage = time.perf_counter()
    set_stage("SVMs and box regressors")
    provenance = None
    svm_stats: dict = {}
    if stop_after == "finetune":
        model.config = config = config.replace(**{"test.scorer": "softmax"})
        log.info("stopping after fine-tuning: no SVMs or box regressors; the model scores with the fc8 softmax")
    else:
        provenance, svm_stats = _classifier_stage(model, train, dataset, config, classifiers_path, finetune_stats,
                                              policy, progress, history, peak_rss)
    end_stage("svm_and_regression", stage)
    if config.calibration != "none" and stop_after is None:
        stage = time.perf_counter()
        set_stage("calibration")
        model.calibration = calibration_stage(dataset, config, out_dir, progress, policy)
        end_stage("calibration", stage)
    model_path = out_dir / MODEL_FILE
    if not distributed.is_main():
        distributed.barrier()  # returns once rank 0 has written model.pt and the summary
        return model_path
    set_stage("writing the model")
    save_model(model_path, model, stages={"finetune": finetune_stats.get("provenance"), "classifiers": provenance})
    timings["total"] = time.perf_counter() - start
    summary = {"images": len(train), "skipped_images": skipped, "classes": dataset.classes, "timings_s": timings,
               "peak_rss_mib_after": peak_rss, "conv_map_bytes_per_image": map_stats["bytes_per_image"],
               "finetune": finetune_stats, "svm": svm_stats, "config": config.to_dict()}
    write_json_atomic(out_dir / SUMMARY_FILE, summary, allow_nan=True)  # a diverged loss is a finding
    for name, seconds in timings.items():
        peak = f"   peak RSS so far {peak_rss[name]:7.0f} MiB" if name in peak_rss else ""
        log.info("%20s: %8.1f s%s", name, seconds, peak)
    distributed.barrier()
    return model_path


def _conv_map_stage(model: DetectorModel, train: list[ImageWindows], config: Config, progress: bool,
                    stop_after: str | None) -> tuple[list[ImageWindows], dict]:
    """The conv maps of every training image at the training scales (both flips with
    ``sampling.flip``) and, unless the run stops after fine-tuning, at the scales only the SVM stage
    reads (``svm.scales``); returns the images whose maps were made and the map statistics (with
    ``"failed"``: how many images gave none)."""
    provider = model.conv_maps
    flips = (False, True) if config.sampling.flip else (False,)
    map_stats = provider.precompute([w.record for w in train], config.scales, flips, progress,
                                    desc="conv maps (train)")
    log.info("conv maps: %.0f bytes per image (%d scales x %d flips)",
             map_stats["bytes_per_image"], len(config.scales), len(flips))
    failed = set(map_stats.get("failed_ids", ()))
    svm_only = tuple(s for s in svm_scales(config) if s not in config.scales)
    if svm_only and stop_after != "finetune":  # svm.scales: maps the SVM stage alone reads
        check_scales(model.backbone, svm_only)
        svm_flips = (False, True) if config.svm.flip_positives else (False,)
        extra = provider.precompute([w.record for w in train], svm_only, svm_flips, progress,
                                    desc="conv maps (SVMs)")
        failed |= set(extra.get("failed_ids", ()))
    return [w for w in train if w.record.image_id not in failed], {**map_stats, "failed": len(failed)}


def _classifier_stage(model: DetectorModel, train: Sequence[ImageWindows], dataset: VOCDataset, config: Config,
                      classifiers_path: Path, finetune_stats: dict, policy: str, progress: bool,
                      history: RunLog, peak_rss: dict) -> tuple[dict, dict]:
    """The SVMs and box regressors into ``model`` (reused from ``classifiers_path`` when its record
    matches, else trained and written); returns the stage's provenance and the SVM statistics."""
    backbone = model.backbone
    provenance = classifiers_provenance(config, list(dataset.classes), backbone_fingerprint(backbone),
                                training_data_digest(train), finetune_stats["checksum"])
    state = reusable_classifiers(classifiers_path, provenance, policy)
    if state is not None:
        model.svm = SVMModel.from_state_dict(state["svm"])
        model.regressor = BoxRegressor.from_state_dict(state["regressor"])
        log.info("SVMs and box regressors: %s was made with these settings and this head; reusing it",
                 classifiers_path)
        svm_stats = state["stats"]
    else:
        with mapping_large_blocks():
            model.svm, regression, svm_stats = train_classifiers(model, train, progress, history.svm_retrain)
            peak_rss["svms"] = peak_rss_mib()
            release_freed_memory()
            model.regressor = regression.fit(progress)
        if distributed.is_main():  # every rank holds the same SVMs and regressors; one writes them
            save_checkpoint(classifiers_path, seal({"svm": model.svm.state_dict(),
                                                    "regressor": model.regressor.state_dict(),
                                                    "stats": svm_stats, "stage": provenance}))
    return provenance, svm_stats


def calibration_stage(dataset: VOCDataset, config: Config, out_dir: Path, progress: bool,
                      policy: str) -> ScoreCalibration | None:
    """Calibrated scores for the model trained on ``dataset`` (``config.calibration``): its twin (the
    same settings, no calibration) is trained on the split's -fit part in ``out_dir/calibration``
    (every stage reused or resumed as usual), tested on its -holdout part (reused when that folder
    is complete and was made by the twin), and each class's map fitted on those detections
    (``detector.engine.calibrate``).  Returns the calibration (None on the ranks other than 0)."""
    if dataset.split.endswith(tuple(f"-{part}" for part in HOLDOUT_PARTS)):
        raise ValueError(f"calibration needs held-out images of split {dataset.split!r}: train on a split "
                         "of its own (not a -fit or -holdout part)")
    fit = load_voc(dataset.root, f"{dataset.split}-fit", dataset.classes)
    holdout = load_voc(dataset.root, f"{dataset.split}-holdout", dataset.classes)
    twin_dir = Path(out_dir) / CALIBRATION_DIR
    twin_path = train_detector(fit, config.replace(calibration="none"), twin_dir, progress, policy)
    twin = load_model(twin_path, cache_dir=cache_root(dataset.root))
    results = twin_dir / "holdout"
    made = ((run_state(results) or {}).get("made_by") or {}).get("model") or {}
    if (run_state(results) or {}).get("status") != "complete" or made.get("checksum") != twin.source["checksum"]:
        test_detector(twin, holdout, results, progress=progress)
    else:
        log.info("calibration: %s holds the twin's detections on %s; reusing them", results, holdout.split)
    if not distributed.is_main():
        return None
    return fit_on_folder(results, dataset.root, holdout.split, dataset.classes, config.calibration)
