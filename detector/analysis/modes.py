"""SPP-net against R-CNN on the same trunk, head and windows: seconds per stage, speed-ups, memory.

``benchmark_modes`` runs the test pipeline (``detector.inference.detect.detect``) on N images with cached
proposals in R-CNN mode (``detector.features.rcnn``) and in SPP mode at 1 and at 5 scales, and returns, per
scale set, the seconds per image of every stage for both modes, the speed-ups, the pixel ratio,
peak memory and the conv-map cache bytes per image.

Decisions:
- Same windows, same model: every mode scores the same proposals with the same head, SVMs and
  box regressors; only the path from pixels to pooled features differs.
- SPP mode computes its conv maps afresh into a temporary cache, as a first test run does
  (decode, resize, trunk, float16 write); reading maps back from a warm cache would time the
  disk, not the trunk.  That folder's size per image is the conv-map cache cost.
- R-CNN mode does not use the scales: it is timed once and compared with both SPP runs.
- The modes take turns image by image (R-CNN, SPP at 1 scale, SPP at 5 scales on image 1, then
  image 2, ...), so load from other jobs on a shared machine hits all of them alike.  Each mode
  first runs once on a few windows, untimed, so one-off start-up costs are not counted.
- Proposals: the selective-search CPU seconds recorded in the proposal cache when each image's
  proposals were computed (one single-threaded worker; CPU time does not depend on how busy the
  machine was); the same for both modes.  The "test" speed-up leaves them out.
- Feature stage = ``conv`` + ``pooling``: pixels to pooled features, the part SPP-net changes.
  fc, scoring, regression and NMS run the same head on the same windows in both modes.
- ``pixel_ratio``: pixels R-CNN pushes through the trunk (windows x input size squared) over the
  pixels SPP mode pushes (the resized image at every scale, all of which are computed), summed
  over the images.  It bounds the feature-stage speed-up while the trunk's cost is proportional
  to its input's pixels.
- Timed runs keep freed memory in the process, as the tools run (``keep_freed_memory``): handing
  the heap back before each run made every SPP conv pass and pooling result page-fault afresh
  (on 10 VOC images at 688, one thread: 0.42 s conv + 0.11 s pooling per image, against
  0.26 s + 0.05 s warm), while R-CNN's batches reuse their memory after the first one, so
  trimming the heap favoured R-CNN.
- Peak memory: a separate untimed pass over the first ``MEMORY_IMAGES`` images, each mode with
  its own empty conv-map folder; before each run the freed heap is handed back and the peak
  resident set (``VmHWM``) reset through ``/proc/self/clear_refs``.  Reported: the maximum
  peak and its rise above the resident set at the start of a run.  Linux only (None elsewhere).
- Threads: ``torch.set_num_threads(threads)``; one thread by default gives the steadiest
  figures on a shared machine, and both modes run under the same setting.
- Accuracy: the detections of each mode on the timed images are evaluated too (VOC07 AP over
  the classes present), so one run gives both modes' speed and accuracy on the same images with
  the same model; with an untrained head it means nothing.
- ``fc6_rank``: optionally a third SPP run per scale set, with fc6 compressed by a truncated SVD
  (``detector.model.compression``), timed in the same turns so that the exact and the compressed
  head are compared side by side on the same images and machine load.  It computes its own
  conv maps, as a first test run of that model would, so each head is set against a conv pass
  timed in the same turn.
"""
from __future__ import annotations

import dataclasses
import gc
import logging
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from detector.config import PAPER_SCALES, Config
from detector.core.records import ImageRecord
from detector.core.runtime import release_freed_memory
from detector.core.timing import STAGES, StageTimer
from detector.data.voc import VOCDataset
from detector.evaluation.evaluator import VOCEvaluator
from detector.features.geometry import image_scale_factor, resized_size
from detector.inference.detect import detect
from detector.model.compression import compress_model
from detector.model.detector import DetectorModel, build_detector
from proposals.cache import ProposalCache, compute_proposals, default_cache_folder, search_timings

log = logging.getLogger(__name__)

SCALE_SETS: dict[str, tuple[int, ...]] = {"1": (688,), "5": PAPER_SCALES}
WARM_UP_WINDOWS = 16
MEMORY_IMAGES = 2


def fresh_model(classes: Sequence[str], config: Config) -> DetectorModel:
    """An untrained detector: the configured trunk, a seeded fc head scored by its softmax.

    Trunk, pooling and fc cost do not depend on the head's weights; scoring, regression and NMS
    do (an untrained head lets every window through the score threshold, and there is no box
    regressor), so a trained model gives the representative figures for those stages.
    """
    model = build_detector(config.replace(**{"test.scorer": "softmax"}), classes)
    model.head.eval()
    return model


def trunk_pixels(record: ImageRecord, windows: int, scales: Sequence[int], max_side: int,
                 input_size: int) -> tuple[int, int]:
    """Pixels the trunk sees for one image: (R-CNN: windows x input size^2, SPP: every scale)."""
    spp = sum(np.prod(resized_size(record.height, record.width,
                                   image_scale_factor(record.height, record.width, s, max_side)))
              for s in scales)
    return windows * input_size * input_size, int(spp)


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _release_memory() -> None:
    """Collect garbage and hand the freed heap back, so one mode's peak is not hidden by another's."""
    gc.collect()
    release_freed_memory()


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@dataclasses.dataclass
class ModeRun:
    """One mode under test: its model view, timer, memory peaks and detections."""

    name: str
    model: DetectorModel
    timer: StageTimer = dataclasses.field(default_factory=StageTimer)
    peak_kib: int = 0
    rise_kib: int = 0
    evaluator: VOCEvaluator | None = None

    def __post_init__(self) -> None:
        self.evaluator = VOCEvaluator(self.model.classes, use_07_metric=True, coco=False)

    def run(self, record: ImageRecord, proposals: np.ndarray) -> None:
        """Timed: detect on one image, heap kept warm."""
        found = detect(self.model, record, proposals, self.timer)
        self.evaluator.process(record, found)

    def measure_memory(self, record: ImageRecord, proposals: np.ndarray, folder: Path) -> None:
        """Untimed: detect on one image from an empty heap and conv-map folder, recording the peak."""
        model = _mode_view(self.model, self.model.config.feature_path, self.model.test_scales, folder)
        _release_memory()
        measured = _reset_peak()
        start = _status_kib("VmRSS")
        detect(model, record, proposals, StageTimer())
        peak = _status_kib("VmHWM")
        if measured and start is not None and peak is not None:
            self.peak_kib = max(self.peak_kib, peak)
            self.rise_kib = max(self.rise_kib, peak - start)

    def accuracy(self) -> dict:
        """VOC07 mAP and AP per class of this mode's detections on the images it ran."""
        metrics = self.evaluator.evaluate()
        return {"mAP": metrics["mAP"], "ap": metrics["ap"]}

    def memory_mb(self) -> dict[str, float] | None:
        if not self.peak_kib:
            return None
        return {"peak_rss_mb": self.peak_kib / 1024, "rise_mb": self.rise_kib / 1024}


def _mode_view(model: DetectorModel, feature_path: str, scales: Sequence[int], folder: Path) -> DetectorModel:
    """The model with another feature path, tested at ``scales``, its conv maps cached in ``folder``."""
    return model.with_config(model.config.replace(feature_path=feature_path, **{"test.scales": tuple(scales)}),
                             folder)


def cached_proposals(dataset: VOCDataset, records: Sequence[ImageRecord], config: Config,
                     progress: bool = True) -> tuple[dict[str, np.ndarray], float]:
    """Proposals of ``records`` from the dataset's default cache (computing missing ones), and the
    mean selective-search CPU seconds per image recorded in it."""
    cache = ProposalCache(default_cache_folder(dataset.root, config.proposals.method, config.proposals.max_side))
    compute_proposals(records, cache, config.proposals.workers, config.proposals.method, config.proposals.max_side,
                      progress)
    found = {r.image_id: cache.load(r.image_id, (r.width, r.height)) for r in records}
    found = {k: v for k, v in found.items() if v is not None}
    timings = search_timings([r for r in records if r.image_id in found], cache)
    return found, timings.cpu_seconds


def benchmark_modes(model: DetectorModel, dataset: VOCDataset, images: int = 10,
                    scale_sets: dict[str, tuple[int, ...]] | None = None, threads: int = 1,
                    progress: bool = True, fc6_rank: int | None = None, rcnn: bool = True) -> dict[str, dict]:
    """Time R-CNN mode and SPP mode at each scale set on the first ``images`` images of the split.

    Returns ``{key: table}`` per scale set (keys of ``scale_sets``, default ``"1"`` (688) and
    ``"5"`` (the paper's five)); see ``summarise`` for a table's fields.  With ``fc6_rank``, SPP
    mode is also timed with fc6 compressed to that rank.  ``rcnn=False`` leaves R-CNN mode out (its
    trunk takes about a minute per image on one thread): only the scale sets are compared.
    """
    scale_sets = dict(scale_sets or SCALE_SETS)
    compressed = compress_model(model, fc6_rank)[0] if fc6_rank is not None else None
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        results = _benchmark(model, compressed, dataset, images, scale_sets, threads, progress, rcnn)
    finally:
        torch.set_num_threads(previous_threads)
    first = next(iter(results.values()))["spp"]["total"]
    for table in results.values():  # whole test, proposals included, against the first scale set
        table["total_vs_first_set"] = table["spp"]["total"] / first if first > 0 else None
    return results


def _benchmark(model: DetectorModel, compressed: DetectorModel | None, dataset: VOCDataset, images: int,
               scale_sets: dict[str, tuple[int, ...]], threads: int, progress: bool,
               with_rcnn: bool = True) -> dict[str, dict]:
    records = list(dataset.records[:images])
    proposals, proposal_seconds = cached_proposals(dataset, records, model.config, progress)
    records = [r for r in records if r.image_id in proposals]
    if not records:
        raise ValueError(f"no image of {dataset.root} split {dataset.split} has proposals")
    with tempfile.TemporaryDirectory(prefix="sppnet-bench-") as tmp:
        folder = Path(tmp)
        rcnn = ModeRun("rcnn", _mode_view(model, "rcnn", model.test_scales, folder / "rcnn")) if with_rcnn else None
        spp = {key: ModeRun(f"spp-{key}", _mode_view(model, "spp", scales, folder / f"spp-{key}"))
               for key, scales in scale_sets.items()}
        svd = {key: ModeRun(f"spp-{key}-svd", _mode_view(compressed, "spp", scales, folder / f"svd-{key}"))
               for key, scales in scale_sets.items()} if compressed is not None else {}
        runs = [*([rcnn] if rcnn else []), *spp.values(), *svd.values()]
        for run in runs:  # untimed warm-up on a few windows, maps cached elsewhere
            warm = _mode_view(run.model, run.model.config.feature_path, run.model.test_scales, folder / "warm-up")
            detect(warm, records[0], proposals[records[0].image_id][:WARM_UP_WINDOWS], StageTimer())
        for record in tqdm(records, desc="benchmark", disable=not progress, unit="img"):
            for run in runs:
                run.run(record, proposals[record.image_id])
        for record in tqdm(records[:MEMORY_IMAGES], desc="peak memory", disable=not progress, unit="img"):
            for run in runs:
                run.measure_memory(record, proposals[record.image_id], folder / f"memory-{run.name}")
        cache_bytes = {key: sum(f.stat().st_size for f in (folder / f"spp-{key}").rglob("*.npz"))
                       / len(records) for key in scale_sets}
    windows = [len(proposals[r.image_id]) for r in records]
    return {key: summarise(rcnn, spp[key], records, windows, scale_sets[key], model, proposal_seconds,
                           cache_bytes[key], threads, svd.get(key))
            for key in scale_sets}


def summarise(rcnn: ModeRun | None, spp: ModeRun, records: Sequence[ImageRecord], windows: Sequence[int],
              scales: Sequence[int], model: DetectorModel, proposal_seconds: float,
              cache_bytes: float, threads: int, svd: ModeRun | None = None) -> dict:
    """One scale set's table: per-stage seconds per image of both modes, speed-ups and the rest.

    ``feature_speedup`` = R-CNN (conv + pooling) / SPP (conv + pooling); ``test_speedup`` = the same
    for the whole test without proposals; ``pixel_ratio`` (see the module docstring); ``detail``:
    R-CNN's conv split into warp and trunk; ``accuracy``: each mode's VOC07 mAP and AP per class
    on these images; ``targets``: the issue's targets, met or not.  With ``svd`` (SPP mode with a
    compressed fc6) also ``spp_svd`` (its stages) and ``svd`` (its rank, test speed-up, head
    seconds and accuracy).
    """
    runs = {"rcnn": rcnn, "spp": spp, **({"spp_svd": svd} if svd is not None else {})}
    tables: dict[str, dict | None] = {}
    for name, run in runs.items():
        if run is None:  # R-CNN mode left out
            tables[name] = None
            continue
        table = run.timer.per_image()
        table["proposals"] = proposal_seconds
        table["total"] = sum(table[stage] for stage in STAGES)
        tables[name] = table
    pixels = np.sum([trunk_pixels(r, n, scales, model.config.max_side, model.backbone.input_size)
                     for r, n in zip(records, windows)], axis=0)
    pixel_ratio = float(pixels[0] / pixels[1])

    def feature(table: dict[str, float]) -> float:
        return table["conv"] + table["pooling"]

    def test(table: dict[str, float]) -> float:
        return table["total"] - table["proposals"]

    def head(table: dict[str, float]) -> float:
        return sum(table[stage] for stage in ("pooling", "fc", "scoring", "nms"))

    def speedup(measure, fast: dict[str, float]) -> float | None:
        return measure(tables["rcnn"]) / measure(fast) if tables["rcnn"] is not None else None

    feature_speedup = speedup(feature, tables["spp"])
    test_speedup = speedup(test, tables["spp"])
    targets = {}
    if feature_speedup is not None:
        targets["feature_speedup_at_least_0.8_pixel_ratio"] = feature_speedup >= 0.8 * pixel_ratio
    if len(scales) == 1:
        if feature_speedup is not None:
            targets.update({"feature_speedup_at_least_100": feature_speedup >= 100,
                            "test_speedup_at_least_20": test_speedup >= 20})
        targets["pooling_fc_scoring_nms_at_most_conv"] = head(tables["spp"]) <= tables["spp"]["conv"]
        if svd is not None:
            targets["pooling_fc_scoring_nms_at_most_conv_with_svd_fc6"] = \
                head(tables["spp_svd"]) <= tables["spp_svd"]["conv"]
    n = max(rcnn.timer.images, 1) if rcnn is not None else 1
    extra = {} if svd is None else {
        "spp_svd": tables["spp_svd"],
        "svd": {"fc6_rank": svd.model.config.fc6_rank, "test_speedup": speedup(test, tables["spp_svd"]),
                "spp_pooling_fc_scoring_nms": head(tables["spp_svd"]), "accuracy": svd.accuracy()}}
    return {
        "scales": list(scales), "images": len(records), "windows_per_image": float(np.mean(windows)),
        "threads": threads, "feature_speedup": feature_speedup, "test_speedup": test_speedup,
        "pixel_ratio": pixel_ratio,
        "feature_speedup_over_pixel_ratio": feature_speedup / pixel_ratio if feature_speedup else None,
        "spp": tables["spp"], "rcnn": tables["rcnn"], **extra,
        "detail": {"rcnn_warp": rcnn.timer.seconds.get("warp", 0.0) / n if rcnn else None,
                   "rcnn_trunk": rcnn.timer.seconds.get("trunk", 0.0) / n if rcnn else None,
                   "spp_pooling_fc_scoring_nms": head(tables["spp"])},
        "memory": {"spp": spp.memory_mb(), "rcnn": rcnn.memory_mb() if rcnn else None},
        "accuracy": {"spp": spp.accuracy(), "rcnn": rcnn.accuracy() if rcnn else None},
        "conv_per_scale": {str(scale): spp.timer.seconds.get(f"conv {scale}", 0.0) / max(spp.timer.images, 1)
                           for scale in scales},
        "conv_map_cache_bytes_per_image": cache_bytes,
        "targets": targets,
    }


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def format_benchmark(results: dict[str, dict]) -> str:
    """The tables as text: one block per scale set (without R-CNN's column when it was left out)."""
    lines = []
    for key, table in results.items():
        rcnn = table["rcnn"]
        lines.append(f"SPP-net at {len(table['scales'])} scale(s) {tuple(table['scales'])}{' vs R-CNN' if rcnn else ''}: "
                     f"{table['images']} images, {table['windows_per_image']:.0f} windows per image, "
                     f"{table['threads']} thread(s); seconds per image")
        svd = table.get("svd")
        svd_label = f"SPP r{svd['fc6_rank']}" if svd else ""
        lines.append(f"  {'stage':<11}" + (f"{'R-CNN':>11}" if rcnn else "") + f"{'SPP':>11}"
                     + (f"{'R-CNN/SPP':>11}" if rcnn else "") + f"{svd_label:>11}")
        for stage in (*STAGES, "total"):
            fast = table["spp"][stage]
            slow = f"{rcnn[stage]:11.4f}" if rcnn else ""
            ratio = "" if not rcnn else f"{rcnn[stage] / fast:10.1f}x" if fast > 0 else f"{'-':>11}"
            compressed = f"{table['spp_svd'][stage]:11.4f}" if svd else ""
            lines.append(f"  {stage:<11}{slow}{fast:11.4f}{ratio}{compressed}")
        detail = table["detail"]
        lines.append("  SPP conv per scale: " + ", ".join(f"{scale} {seconds:.3f}"
                                                       for scale, seconds in table["conv_per_scale"].items()))
        if rcnn:
            lines.append(f"  R-CNN conv = warp {detail['rcnn_warp']:.3f} + trunk {detail['rcnn_trunk']:.3f} "
                         f"(+ image decode)")
            lines.append(f"  feature stage (conv + pooling) speed-up {table['feature_speedup']:.1f}x "
                         f"(pixel_ratio {table['pixel_ratio']:.1f}x, "
                         f"{table['feature_speedup_over_pixel_ratio']:.2f} of it)")
            lines.append(f"  whole test excluding proposals speed-up {table['test_speedup']:.1f}x "
                         f"(pixel_ratio {table['pixel_ratio']:.1f}x)")
        if table.get("total_vs_first_set") is not None and key != next(iter(results)):
            lines.append(f"  whole test with proposals: {table['total_vs_first_set']:.2f}x the first scale set's")
        for name, label in (("rcnn", "R-CNN"), ("spp", "SPP")):
            memory = table["memory"][name]
            if memory is not None:
                lines.append(f"  peak memory {label}: {memory['peak_rss_mb']:.0f} MB resident "
                             f"(+{memory['rise_mb']:.0f} MB during an image)")
        lines.append(f"  conv-map cache: {table['conv_map_cache_bytes_per_image'] / 2**20:.2f} MiB per image "
                     f"(x2 with flipped training maps)")
        lines.append(f"  SPP pooling + fc + scoring + NMS {detail['spp_pooling_fc_scoring_nms']:.3f} s "
                     f"vs conv {table['spp']['conv']:.3f} s")
        if svd:
            speed = f", whole test speed-up {svd['test_speedup']:.1f}x" if svd["test_speedup"] else ""
            lines.append(f"  with fc6 at rank {svd['fc6_rank']}: pooling + fc + scoring + NMS "
                         f"{svd['spp_pooling_fc_scoring_nms']:.3f} s vs conv {table['spp_svd']['conv']:.3f} s{speed}")
        accuracy = table["accuracy"]
        compressed = f", SPP r{svd['fc6_rank']} {_percent(svd['accuracy']['mAP'])}" if svd else ""
        rcnn_map = f"R-CNN {_percent(accuracy['rcnn']['mAP'])}, " if accuracy["rcnn"] else ""
        lines.append(f"  mAP (VOC07, these {table['images']} images, classes present): "
                     f"{rcnn_map}SPP {_percent(accuracy['spp']['mAP'])}{compressed}")
        if table["targets"]:
            lines.append("  targets: " + ", ".join(f"{name} {'met' if ok else 'MISSED'}"
                                                   for name, ok in table["targets"].items()))
        lines.append("")
    return "\n".join(lines)
