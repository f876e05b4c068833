"""Drawn detections and plots: sizes kept, colours where the boxes are, files readable."""
import cv2
import numpy as np

from detector.core.images import load_image
from detector.visualization.draw import (
    FP_COLOUR,
    MISSED_COLOUR,
    TP_COLOUR,
    class_colour,
    draw_detections,
    draw_evaluation,
    save_image,
)
from detector.visualization.plots import plot_pr_curves, plot_training_curves


def _grey(height=240, width=320):
    return np.full((height, width, 3), 128, np.uint8)


def test_detections_drawn_in_class_colours_on_a_copy_of_the_same_size(tmp_path):
    image = _grey()
    boxes = np.array([[40, 60, 140, 200], [180, 30, 300, 120]], np.float32)
    drawn = draw_detections(image, boxes, np.array([0.9, 0.4]), np.array([0, 3]), ["a", "b", "c", "d"])
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert (image == 128).all()  # the input is not drawn on
    assert tuple(drawn[130, 40]) == class_colour(0)  # left edge of box 0, below its label
    assert tuple(drawn[110, 180]) == class_colour(3)
    # the label sits on a solid fill of the class colour above the box
    assert (drawn[45:58, 45:60] == class_colour(0)).all(axis=2).mean() > 0.5
    for suffix in (".jpg", ".png"):
        save_image(tmp_path / f"d{suffix}", drawn)
        assert load_image(tmp_path / f"d{suffix}").shape == image.shape
    assert np.array_equal(load_image(tmp_path / "d.png"), drawn)


def test_label_of_a_box_at_the_top_stays_inside_the_image():
    drawn = draw_detections(_grey(100, 120), np.array([[0, 0, 120, 100]], np.float32), np.array([1.0]),
                            np.array([1]), ["x", "long class name"])
    assert (drawn[:20, :60] == class_colour(1)).all(axis=2).mean() > 0.3


def test_evaluation_colours_tell_tp_fp_and_missed_apart():
    image = _grey(300, 400)
    boxes = np.array([[50, 100, 150, 200], [250, 100, 350, 200]], np.float32)
    gt = np.array([[50, 100, 150, 200], [200, 230, 300, 290]], np.float32)
    drawn = draw_evaluation(image, boxes, np.array([0.9, 0.8]), np.array([0, 0]), ["a"], np.array([True, False]),
                            np.array([False, False]), gt, np.array([0, 0]), np.array([False, True]))
    assert drawn.shape[1:] == image.shape[1:] and drawn.shape[0] > image.shape[0]  # + the legend strip
    assert tuple(drawn[170, 50]) == TP_COLOUR and tuple(drawn[170, 250]) == FP_COLOUR
    missed_edge = drawn[230:232, 200:300].reshape(-1, 3)
    share = (missed_edge == MISSED_COLOUR).all(axis=1).mean()
    assert 0.2 < share < 0.9  # dashed: partly drawn, partly background


def test_plots_are_written_as_png(tmp_path):
    curves = {"metric": "voc07", "classes": {
        "a": {"ap": 0.5, "npos": 2, "precision": [1.0, 0.5, 0.67], "recall": [0.5, 0.5, 1.0]},
        "b": {"ap": None, "npos": 0, "precision": [], "recall": []}}}
    plot_pr_curves(curves, tmp_path / "pr.png", "test")
    history = [{"stage": "run"}, *({"stage": "finetune", "iteration": i, "loss": 1 / i, "fg_accuracy": 0.1 * i,
                                    "accuracy": 0.5, "lr": 0.01} for i in range(1, 5)),
               {"stage": "svm", "class": 0, "class_name": "a", "positives": 3, "negatives": 10, "seconds": 0.1}]
    plot_training_curves(history, tmp_path / "curves.png")
    for name in ("pr.png", "curves.png"):
        picture = cv2.imread(str(tmp_path / name))
        assert picture is not None and picture.shape[0] > 200 and picture.std() > 5


def test_the_labels_of_a_crowded_scene_never_cover_each_other():
    from detector.visualization.draw import MAX_LABELS, _label_size, place_labels
    rng = np.random.default_rng(0)
    image = _grey(375, 500)
    # as many labels as are drawn: a crowd of overlapping boxes around one spot, and a box at each border
    centre = np.array([200, 150, 300, 300], np.float32)
    boxes = np.concatenate([centre + rng.uniform(-15, 15, (MAX_LABELS - 2, 4)).astype(np.float32),
                            np.array([[0, 0, 500, 40], [460, 330, 500, 375]], np.float32)])
    texts = [f"person 0.{90 - i}" for i in range(len(boxes))]
    sizes = [_label_size(image, t)[:2] for t in texts]
    corners = place_labels(sizes, boxes, 375, 500)
    rects = [(x, y, x + w, y + h) for (x, y), (w, h) in zip(corners, sizes)]
    for i, a in enumerate(rects):
        assert 0 <= a[0] and a[2] <= 500 and 0 <= a[1] and a[3] <= 375, a  # inside the image
        for b in rects[:i]:
            assert max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1])) == 0
    # the best label keeps its usual place, just above its box
    assert corners[0] == (int(round(boxes[0][0])), int(round(boxes[0][1])) - sizes[0][1])
    for rect, box in zip(rects, boxes):  # every label touches its own box or lies inside it
        x1, y1, x2, y2 = np.round(box).astype(int)
        assert rect[0] < x2 and rect[2] > x1 and y1 - (rect[3] - rect[1]) <= rect[1] <= y2, (rect, box)


def test_only_the_best_labels_are_drawn_and_the_rest_are_boxes():
    from detector.visualization import draw
    boxes = np.array([[10 + 30 * i, 40, 35 + 30 * i, 90] for i in range(12)], np.float32)
    scores = np.linspace(0.95, 0.5, 12)
    labelled = []
    real = draw.draw_label
    draw.draw_label = lambda image, text, *a, **k: labelled.append(text) or real(image, text, *a, **k)
    try:
        draw_detections(_grey(200, 400), boxes, scores, np.zeros(12, np.int64), ["dog"])
    finally:
        draw.draw_label = real
    assert labelled == [f"dog {s:.2f}" for s in scores[:draw.MAX_LABELS]]


def test_dark_class_colours_get_a_light_edge():
    from detector.visualization.draw import EDGE_COLOUR, LIGHT_EDGE_COLOUR, PALETTE, edge_colour
    navy, yellow = PALETTE.index((0, 0, 160)), PALETTE.index((255, 200, 0))
    assert edge_colour(PALETTE[navy]) == LIGHT_EDGE_COLOUR and edge_colour(PALETTE[yellow]) == EDGE_COLOUR
    drawn = draw_detections(np.zeros((100, 100, 3), np.uint8), np.array([[20, 20, 80, 80]], np.float32),
                            np.array([0.5]), np.array([navy]), [str(k) for k in range(20)])
    column = drawn[50, 14:26]  # across the left line on black: light edge, navy, light edge
    assert (column == LIGHT_EDGE_COLOUR).all(axis=1).sum() >= 2 and (column == PALETTE[navy]).all(axis=1).any()


def test_every_class_colour_is_saturated_and_boxes_have_a_dark_edge():
    import colorsys

    from detector.visualization.draw import EDGE_COLOUR, PALETTE
    assert len(set(PALETTE)) == len(PALETTE) == 20
    for colour in PALETTE:  # no cream, mint or grey: they faded into photos
        _, saturation, value = colorsys.rgb_to_hsv(*(c / 255 for c in colour))
        assert saturation >= 0.6 and value >= 0.5, colour
    drawn = draw_detections(np.full((100, 100, 3), 255, np.uint8), np.array([[20, 20, 80, 80]], np.float32),
                            np.array([0.5]), np.array([12]), [str(k) for k in range(20)])
    column = drawn[50, 14:26]  # across the left line: white, dark edge, colour, dark edge, white
    assert (column == EDGE_COLOUR).all(axis=1).sum() >= 2 and (column == class_colour(12)).all(axis=1).any()
