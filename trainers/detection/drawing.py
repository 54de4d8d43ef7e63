"""Sample detections drawn on validation images: a PNG beside the run, and the same picture in TensorBoard."""

import math

import numpy as np

GROUND_TRUTH = (255, 255, 255)
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]  # fmt: skip


def draw(image, detections, class_names, ground_truth=None, min_score=0.5, at_least=3):
    """One uint8 image [H, W, 3] with its detections (boxes normalised yxyx, scores, classes, best first)
    above `min_score` as coloured, labelled boxes, and its ground-truth boxes (normalised) as thin white
    ones. Where fewer than `at_least` pass `min_score` (a detector early in training scores everything
    low), the best others are drawn too, thin, their scores in the label: a picture of nothing would not
    show what the model finds."""
    from PIL import Image, ImageDraw

    picture = Image.fromarray(np.asarray(image, np.uint8))
    pen = ImageDraw.Draw(picture)
    height, width = picture.height, picture.width

    def pixels(box):
        y1, x1, y2, x2 = (float(v) for v in box)
        return [x1 * width, y1 * height, x2 * width, y2 * height]

    for box in [] if ground_truth is None else ground_truth:
        pen.rectangle(pixels(box), outline=GROUND_TRUTH, width=1)
    boxes, scores, classes = detections
    confident = sum(1 for score in scores if score >= min_score)
    for rank, (box, score, c) in enumerate(zip(boxes, scores, classes, strict=True)):
        if score < min_score and rank >= max(confident, at_least):
            continue
        colour = PALETTE[int(c) % len(PALETTE)]
        corners = pixels(box)
        pen.rectangle(corners, outline=colour, width=2 if score >= min_score else 1)
        label = f"{class_names[int(c)]} {score:.2f}"
        left, top = corners[0], max(corners[1] - 11, 0)
        pen.rectangle([left, top, left + 6 * len(label) + 2, top + 11], fill=colour)
        pen.text((left + 1, top), label, fill=(0, 0, 0))
    return np.asarray(picture)


def grid(pictures, columns=None):
    """Pictures of possibly different sizes tiled on a black canvas, row by row."""
    columns = columns or math.ceil(math.sqrt(len(pictures)))
    rows = math.ceil(len(pictures) / columns)
    cell_h = max(p.shape[0] for p in pictures)
    cell_w = max(p.shape[1] for p in pictures)
    canvas = np.zeros((rows * cell_h, columns * cell_w, 3), np.uint8)
    for i, p in enumerate(pictures):
        r, c = divmod(i, columns)
        canvas[r * cell_h : r * cell_h + p.shape[0], c * cell_w : c * cell_w + p.shape[1]] = p
    return canvas


def save_png(picture, path):
    from PIL import Image

    Image.fromarray(picture).save(path)
    return path
