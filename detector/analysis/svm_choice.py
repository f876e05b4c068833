"""Choosing the SVMs' settings on held-out training images (``tools/choose_svm_c.py``).

Mine once per candidate setting on SPLIT-fit with a fine-tuned model's features, refit at each
candidate C on the final caches, and score every candidate, and the model's fc8 softmax, on
SPLIT-holdout from one feature pass; each SVM candidate is then compared with the softmax under
the same test settings by a paired bootstrap over the held-out images.  The tool's docstring gives
the reasons (why a refit is fair only at C at or below the mining's, and what ``--grid`` shares).
"""
from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from tqdm import tqdm

from detector.core.paths import cache_root
from detector.core.timing import StageTimer
from detector.data.voc import load_voc
from detector.engine.train import mine_classifiers, training_windows
from detector.evaluation.bootstrap import PairedBootstrap, paired_bootstrap, rank_matches
from detector.evaluation.evaluator import VOCEvaluator
from detector.inference.detect import detections_from_features
from detector.model.detector import DetectorModel, load_model
from detector.model.features import window_features
from proposals.external import load_proposals
from svm.features import FeatureReplay


@dataclass
class Mined:
    """The SVMs of each mining (label -> (SVMs, the mining's C)), their refits (label -> {C: SVMs}),
    each mining's statistics and the last miner (its per-pass models)."""

    svms: dict[str, tuple[Any, float]] = field(default_factory=dict)
    refits: dict[str, dict[float, Any]] = field(default_factory=dict)
    stats: dict[str, dict] = field(default_factory=dict)
    miner: Any = None


@dataclass
class Choice:
    """What the held-out images measured: metrics per scorer, and each SVM candidate minus the
    softmax under the same test settings."""

    split: str
    fit_images: int
    holdout_images: int
    classes: list[str]
    results: dict[str, dict]
    versus: dict[str, PairedBootstrap]
    mining_stats: dict
    mining_c: float  # the C every mining ran at (``svm.C``), against which refits are judged


def mine_candidates(model: DetectorModel, windows: Sequence, grid_configs: Mapping[str, Any],
                    refit_c: Sequence[float], work_dir: Path, share_features: bool, progress: bool) -> Mined:
    """Mine once per candidate config (with ``share_features``, every mining after the first reads
    the first one's features back from ``work_dir``) and refit each at every C of ``refit_c``; the
    model gets the first mining's box regressors if it has none."""
    mined = Mined()
    replay = FeatureReplay(work_dir / "fc7.float16") if share_features else None
    regression = None
    for label, candidate in grid_configs.items():
        svms, regression_here, mined.stats[label], mined.miner = mine_classifiers(
            dataclasses.replace(model, config=candidate), windows, progress, replay=replay)
        mined.svms[label] = (svms, candidate.svm.C)
        mined.refits[label] = {float(c): mined.miner.refit(c) for c in refit_c}
        if len(mined.svms) == 1:  # the box regressors are fed by the first mining only
            regression = regression_here
    if model.regressor is None:
        model.regressor = regression.fit(progress)
    return mined


def candidate_scorers(model: DetectorModel, mined: Mined, svm_config: Any,
                      variant_configs: Mapping[str, tuple[Any, Any]]) -> dict[str, DetectorModel]:
    """Every scorer to measure, by name: the softmax, each mining's SVMs (and the earlier passes' of
    a single mining), each refit, and all of them again under each test variant (``variant_configs``:
    item -> (its SVM config, its softmax config))."""
    scorers = {"softmax": model}
    for label, (svms, mined_c) in mined.svms.items():
        where = f" {label}" if label else ""
        scorers[f"SVMs{where} as mined (C={mined_c:g})"] = dataclasses.replace(model, svm=svms, config=svm_config)
        if not label:
            passes = mined.miner.pass_models
            scorers.update({f"SVMs after pass {k + 1} of {len(passes)}": dataclasses.replace(
                model, svm=pass_model, config=svm_config) for k, pass_model in enumerate(passes[:-1])})
        scorers.update({f"SVMs{where} refit at C={c:g}": dataclasses.replace(model, svm=refit, config=svm_config)
                        for c, refit in mined.refits[label].items()})
    candidates = [(name, scorer) for name, scorer in scorers.items() if name.startswith("SVMs")]
    for item, (svm_variant, softmax_variant) in variant_configs.items():
        scorers[f"softmax {item}"] = dataclasses.replace(model, config=softmax_variant)
        scorers.update({f"{name} {item}": dataclasses.replace(scorer, config=svm_variant)
                        for name, scorer in candidates})
    return scorers


def score_holdout(model: DetectorModel, scorers: Mapping[str, DetectorModel], records: Sequence,
                  proposals: Mapping[str, Any], progress: bool) -> tuple[dict[str, dict], dict[str, list]]:
    """Each scorer's metrics on ``records`` and its detections per image, from one feature pass."""
    evaluators = {name: VOCEvaluator(model.classes, use_07_metric=True, coco=False) for name in scorers}
    kept: dict[str, list] = {name: [] for name in scorers}
    timer = StageTimer()
    for record in tqdm(records, desc="held-out images", disable=not progress, unit="img"):
        boxes = proposals[record.image_id].astype("float32").reshape(-1, 4)
        features = window_features(model, record, boxes, timer, scales=model.test_scales)  # as detect
        for name, scorer in scorers.items():
            kept[name].append(detections_from_features(scorer, record, boxes, features, timer))
            evaluators[name].process(record, kept[name][-1])
    return {name: evaluator.evaluate() for name, evaluator in evaluators.items()}, kept


def versus_softmax(records: Sequence, kept: Mapping[str, list], num_classes: int, variants: Sequence[str],
                   resamples: int) -> dict[str, PairedBootstrap]:
    """Each SVM candidate minus the softmax under the same test settings (paired bootstrap)."""
    ranked = {name: rank_matches(records, found, num_classes) for name, found in kept.items()}
    versus = {}
    for name in kept:
        if name.startswith("SVMs"):
            variant = next((item for item in variants if name.endswith(f" {item}")), None)
            versus[name] = paired_bootstrap(ranked[name], ranked["softmax" + (f" {variant}" if variant else "")],
                                            resamples=resamples)
    return versus


def choose_svm_settings(root: Path, split: str, model_path: Path, overrides: Mapping[str, str],
                        grid: Mapping[str, Mapping[str, str]], variants: Mapping[str, Mapping[str, str]],
                        refit_c: Sequence[float], images: int | None = None, resamples: int = 1000,
                        progress: bool = True) -> Choice:
    """Mine on ``split``-fit, measure on ``split``-holdout (module docstring); ``grid``: label ->
    svm settings of each mining (one entry, label "", without a grid); settings are checked before
    any work."""
    model = load_model(model_path, cache_dir=cache_root(root), overrides={"test.scorer": "softmax", **overrides})
    svm_config = model.config.replace(**{"test.scorer": "svm"})
    variant_configs = {item: (svm_config.replace(**changes), model.config.replace(**changes))
                       for item, changes in variants.items()}  # checked before any work
    grid_configs = {label: model.config.replace(**changes) for label, changes in grid.items()}
    fit = load_voc(root, f"{split}-fit", model.classes)
    holdout = load_voc(root, f"{split}-holdout", model.classes)
    config = model.config
    windows = training_windows(fit, config, progress)[:images]
    cache_root(root).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="choose_svm_", dir=cache_root(root)) as work:
        mined = mine_candidates(model, windows, grid_configs, refit_c, Path(work), "" not in grid, progress)
    found = load_proposals(root, holdout.records, config.proposals.method, config.proposals.max_side,
                           config.proposals.workers, progress, config.proposals.source)
    scorers = candidate_scorers(model, mined, svm_config, variant_configs)
    records = [r for r in holdout.records if r.image_id in found]
    results, kept = score_holdout(model, scorers, records, found, progress)
    versus = versus_softmax(records, kept, len(model.classes), list(variants), resamples) \
        if resamples and records else {}
    return Choice(split, len(windows), len(records), list(model.classes), results, versus,
                  mined.stats[""] if "" in mined.stats else mined.stats, config.svm.C)


def format_choice(choice: Choice, refit_c: Sequence[float], resamples: int) -> str:
    """The held-out table (mAP and per-class AP per scorer), the differences from the softmax and a
    note on refits looser than the mining."""
    width = max(len(name) for name in choice.results)
    lines = [f"{'scorer':{width}s} mAP   " + " ".join(f"{c[:5]:>5s}" for c in choice.classes)]
    for name, metrics in choice.results.items():
        lines.append(f"{name:{width}s} {100 * metrics['mAP']:5.1f} " + " ".join(
            f"{100 * metrics['ap'][c]:5.1f}" if metrics["ap"].get(c) is not None else "    -" for c in choice.classes))
    if choice.versus:
        lines.append(f"SVMs minus the softmax under the same test settings, mAP points (paired bootstrap over the "
                     f"{choice.holdout_images} held-out images, {resamples} resamples):")
        lines += [f"  {name:{width}s} {difference.mAP}" for name, difference in choice.versus.items()]
    looser = [c for c in refit_c if c > choice.mining_c]
    if looser:
        lines.append(f"note: the refits at C = {', '.join(f'{c:g}' for c in looser)} are above the mining's C = "
                     f"{choice.mining_c:g}: their caches were mined under a tighter model, so they may rank negatives the "
                     f"caches never held above their positives; mine at such a C (--set svm.C=...) to compare it "
                     "fairly")
    return "\n".join(lines)
