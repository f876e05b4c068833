"""Compare two result folders of one split: ``mAP(a) - mAP(b)`` and each class's AP difference
by paired bootstrap over the split's images (``detector.evaluation.bootstrap``)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from detector.core.folders import check_complete
from detector.data.voc import load_voc
from detector.engine.ensemble import check_same_classes, check_same_origin
from detector.evaluation.bootstrap import PairedBootstrap, paired_bootstrap, per_image, rank_matches
from detector.evaluation.voc_eval import read_result_files, result_classes


def compare_result_dirs(voc_root: str | Path, split: str, result_dir: Path, other_dir: Path,
                        classes: Sequence[str] | None = None, use_07_metric: bool = True,
                        resamples: int = 1000, seed: int = 0,
                        allow_incomplete: bool = False) -> tuple[list[str], PairedBootstrap]:
    """The class names and the paired bootstrap of ``result_dir`` minus ``other_dir`` (devkit result
    files of ``split``); folders of another split, dataset or class list, or incomplete ones (unless
    ``allow_incomplete``), are refused by name."""
    for folder in (result_dir, other_dir):
        check_complete(folder, allow_incomplete)
    check_same_origin([result_dir, other_dir], split, Path(voc_root))
    if classes is None:
        check_same_classes([result_dir, other_dir], split)
    dataset = load_voc(voc_root, split, result_classes(result_dir, split, classes))
    ids = [record.image_id for record in dataset.records]
    a, b = (rank_matches(dataset.records, per_image(read_result_files(d, split, dataset.classes, ids, allow_incomplete),
                                                    dataset.records, dataset.classes), len(dataset.classes))
            for d in (result_dir, other_dir))
    return list(dataset.classes), paired_bootstrap(a, b, resamples, seed, use_07_metric)
