"""Cheap checks that encoded image bytes can be decoded, in graph code and in Python.

tf.data cannot catch a decode error inside a map, so bytes that would fail are recognised before decoding:
a known magic number, and for JPEG and PNG the end marker (TensorFlow rejects JPEGs without FFD9 and
truncated PNGs). End markers are searched in the last TAIL_BYTES because some cameras append data.
"""

import tensorflow as tf

TAIL_BYTES = 4096
MIN_BYTES = 16
JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GIF_MAGICS = (b"GIF87a", b"GIF89a")
BMP_MAGIC = b"BM"
JPEG_END = b"\xff\xd9"
PNG_END = b"IEND"


def _contains(haystack, needle):
    """Whether the uint8 vector `haystack` contains the byte string `needle`, without a loop over bytes."""
    windows = tf.maximum(tf.shape(haystack)[0] - len(needle) + 1, 0)
    match = tf.ones([windows], tf.bool)
    for i, byte in enumerate(needle):
        match &= tf.equal(haystack[i : i + windows], byte)
    return tf.reduce_any(match)


def looks_decodable(data):
    """Scalar bool tensor: `data` (scalar string) is a complete JPEG or PNG, or a GIF or BMP."""
    length = tf.strings.length(data)

    def head(n):
        return tf.strings.substr(data, 0, n)

    tail_len = tf.minimum(length, TAIL_BYTES)
    tail = tf.io.decode_raw(tf.strings.substr(data, length - tail_len, tail_len), tf.uint8)
    is_jpeg = tf.equal(head(len(JPEG_MAGIC)), JPEG_MAGIC)
    is_png = tf.equal(head(len(PNG_MAGIC)), PNG_MAGIC)
    is_gif = tf.equal(head(6), GIF_MAGICS[0]) | tf.equal(head(6), GIF_MAGICS[1])
    is_bmp = tf.equal(head(2), BMP_MAGIC)
    complete = tf.cond(
        is_jpeg,
        lambda: _contains(tail, JPEG_END),
        lambda: tf.cond(is_png, lambda: _contains(tail, PNG_END), lambda: is_gif | is_bmp),
    )
    return (length >= MIN_BYTES) & complete


def file_looks_decodable(path):
    """The same check in Python, for validating folders before the first epoch."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(size - TAIL_BYTES, 0))
            tail = f.read()
    except OSError:
        return False
    if size < MIN_BYTES:
        return False
    if head.startswith(JPEG_MAGIC):
        return JPEG_END in tail
    if head.startswith(PNG_MAGIC):
        return PNG_END in tail
    return head.startswith(GIF_MAGICS) or head.startswith(BMP_MAGIC)
