"""The sample-detection picture: what it draws of a confident detector and of one early in training."""

import numpy as np

from trainers.detection import drawing


def colours_drawn(picture):
    return {tuple(int(v) for v in c) for c in picture.reshape(-1, 3)}


def test_confident_detections_are_drawn_and_a_weak_detectors_best_three_are_too():
    image = np.zeros((120, 120, 3), np.uint8)
    boxes = np.array([[0.1 * i, 0.1 * i, 0.1 * i + 0.3, 0.1 * i + 0.3] for i in range(5)], np.float32)
    classes = np.arange(5)
    names = [f"class{i}" for i in range(5)]
    truth = np.array([[0.5, 0.5, 0.9, 0.9]], np.float32)

    confident = drawing.draw(image, (boxes, np.array([0.9, 0.8, 0.7, 0.6, 0.55]), classes), names, truth)
    assert {drawing.PALETTE[i] for i in range(5)} | {drawing.GROUND_TRUTH} <= colours_drawn(confident)

    # One above 0.5: it and the next two best, not the two below them.
    weak = drawing.draw(image, (boxes, np.array([0.9, 0.3, 0.2, 0.1, 0.04]), classes), names, truth)
    drawn = colours_drawn(weak)
    assert {drawing.PALETTE[i] for i in range(3)} <= drawn
    assert not {drawing.PALETTE[3], drawing.PALETTE[4]} & drawn

    nothing = drawing.draw(image, (boxes[:0], np.zeros(0), classes[:0]), names, truth)
    assert colours_drawn(nothing) == {(0, 0, 0), drawing.GROUND_TRUTH}
