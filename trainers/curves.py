"""Charts of runs (PNG, Pillow only): scalars read back from TensorBoard logs drawn as line charts, and
confusion matrices."""

import math
import pathlib

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75)]


def scalars(log_dir, tag):
    """{step: value} of one scalar tag from a run's TensorBoard event files (a later write of a step wins)."""
    import tensorflow as tf

    values = {}
    for path in sorted(pathlib.Path(log_dir).glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = float(tf.make_ndarray(value.tensor))
    return values


def _ticks(low, high, count=5):
    """Round tick values covering [low, high]."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if raw <= m * step)
    first = math.floor(low / step) * step
    return [first + i * step for i in range(int(math.ceil((high - first) / step)) + 1)]


def _lighter(colour, amount=0.75):
    return tuple(int(c + (255 - c) * amount) for c in colour)


def line_chart(series, path=None, title="", xlabel="step", ylabel="", size=(720, 440), dashed=(), colours=None,
               y_range=None, bands=None):  # fmt: skip
    """Draws {label: {x: y}} as lines with axes, ticks and a legend; writes `path` (PNG) and returns it, or
    returns the PIL image when `path` is None.

    dashed: labels drawn dashed (training curves beside solid validation ones); colours: {label: index
    into COLOURS} (default: one each, in order); y_range: (low, high) shared by panels drawn apart;
    bands: {label: {x: (low, high)}} drawn as a light band under the label's line (a spread over seeds).
    """
    from PIL import Image, ImageDraw

    width, height = size
    left, right, top, bottom = 64, 16, 32, 48
    picture = Image.new("RGB", size, "white")
    pen = ImageDraw.Draw(picture)
    points = [(x, y) for values in series.values() for x, y in values.items() if math.isfinite(y)]
    if not points:
        pen.text((left, height // 2), "no data", fill="black")
        return _finish(picture, path)
    xs = _ticks(min(p[0] for p in points), max(p[0] for p in points))
    ys = _ticks(*(y_range or (min(p[1] for p in points), max(p[1] for p in points))))

    def at(x, y):
        px = left + (x - xs[0]) / (xs[-1] - xs[0]) * (width - left - right)
        py = height - bottom - (y - ys[0]) / (ys[-1] - ys[0]) * (height - top - bottom)
        return px, py

    for x in xs:
        px, _ = at(x, ys[0])
        pen.line([(px, top), (px, height - bottom)], fill=(230, 230, 230))
        pen.text((px - 12, height - bottom + 6), f"{x:g}", fill="black")
    for y in ys:
        _, py = at(xs[0], y)
        pen.line([(left, py), (width - right, py)], fill=(230, 230, 230))
        pen.text((4, py - 6), f"{y:.4g}", fill="black")
    pen.text((left, 8), title, fill="black")
    pen.text(((width - len(xlabel) * 6) // 2, height - 18), xlabel, fill="black")
    pen.text((4, top - 18), ylabel, fill="black")
    colour_of = {label: COLOURS[(colours or {}).get(label, i) % len(COLOURS)] for i, label in enumerate(series)}
    for label, spread in (bands or {}).items():
        ordered = sorted(spread.items())
        outline = [at(x, high) for x, (_, high) in ordered] + [at(x, low) for x, (low, _) in reversed(ordered)]
        if len(outline) > 2:
            pen.polygon(outline, fill=_lighter(colour_of.get(label, COLOURS[0])))
    pen.rectangle([left, top, width - right, height - bottom], outline="black")
    for i, (label, values) in enumerate(series.items()):
        colour = colour_of[label]
        line = [at(x, y) for x, y in sorted(values.items()) if math.isfinite(y)]
        if label in dashed:
            for a, b in zip(line[::2], line[1::2], strict=False):
                pen.line([a, b], fill=colour, width=2)
        elif len(line) > 1:
            pen.line(line, fill=colour, width=2)
        for px, py in line if len(line) < 40 and label not in dashed else []:
            pen.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
        pen.rectangle([width - right - 150, top + 8 + 14 * i, width - right - 138, top + 18 + 14 * i], fill=colour)
        pen.text((width - right - 132, top + 7 + 14 * i), label, fill="black")
    return _finish(picture, path)


def _finish(picture, path):
    if path is None:
        return picture
    picture.save(path)
    return path


def side_by_side(pictures, path):
    """PIL images pasted left to right into one PNG at `path`; returns the path."""
    from PIL import Image

    width = sum(p.width for p in pictures)
    canvas = Image.new("RGB", (width, max(p.height for p in pictures)), "white")
    left = 0
    for p in pictures:
        canvas.paste(p, (left, 0))
        left += p.width
    canvas.save(path)
    return path


def confusion_chart(matrix, class_names, path, title="confusion matrix (rows: true class, row-normalised)"):
    """A confusion matrix [true, predicted] as a heat map, each row normalised, counts written in the cells
    when they fit; class names on both axes for up to 40 classes."""
    import numpy as np
    from PIL import Image, ImageDraw

    matrix = np.asarray(matrix, np.float64)
    k = len(matrix)
    cell = max(4, min(40, 800 // max(k, 1)))
    named = k <= 40
    margin = 8 + (6 * max((len(n) for n in class_names), default=1) + 8 if named else 0)
    size = (margin + k * cell + 16, 32 + margin + k * cell + 16)
    picture = Image.new("RGB", size, "white")
    pen = ImageDraw.Draw(picture)
    pen.text((8, 8), title, fill="black")
    rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    top = 32 + margin
    for i in range(k):
        for j in range(k):
            shade = int(255 * (1 - rows[i, j]))
            box = [margin + j * cell, top + i * cell, margin + (j + 1) * cell - 1, top + (i + 1) * cell - 1]
            pen.rectangle(box, fill=(shade, shade, 255))
            if cell >= 28 and matrix[i, j]:
                pen.text(
                    (box[0] + 2, box[1] + cell // 3), f"{int(matrix[i, j])}", fill="black" if shade > 96 else "white"
                )
        if named:
            pen.text((4, top + i * cell + cell // 3), class_names[i][: (margin - 12) // 6], fill="black")
    if named:  # predicted classes along the top, one initial letter stack per column
        for j, name in enumerate(class_names):
            for r, letter in enumerate(name[: (margin - 8) // 10]):
                pen.text((margin + j * cell + cell // 3, 32 + r * 10), letter, fill="black")
    picture.save(path)
    return path
