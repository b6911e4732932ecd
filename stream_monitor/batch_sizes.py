"""Batch sizes that keep the set of tensor shapes small.

Why: on the CPU, PyTorch runs convolutions through oneDNN, which compiles (JIT) a kernel for
every input shape it meets and keeps the last 1024 in a cache. A batch dimension that takes
every value (MTCNN's candidate boxes, the frames a detector lane collects) keeps that cache
full of one-off kernels: in the soak it was replaced about 7 times a second, and a worker
that had once carried twice its streams kept the kernels of that peak (RELIABILITY.md,
"Memory"). A few sizes per octave bound the shapes to a few per layer and input size.

Two ways, for two kinds of batch: :func:`padded_size` pads a batch up (MTCNN's R- and O-nets,
small nets whose batch is the number of candidate boxes, up to 512: three significant
bits), :func:`power_of_two_parts` splits it (frames: the same rows, no padding).
"""

from __future__ import annotations


def padded_size(n: int) -> int:
    """The size a batch of ``n`` rows is padded to: ``n`` rounded up to three significant bits
    (1-8, 10, 12, 14, 16, 20, 24, 28, 32, 40, ...). Less than a fifth of a padded batch is
    padding (under a tenth on average), and up to facenet-pytorch's chunk of 512 there are
    32 sizes."""
    if n <= 8:
        return n
    step = 1 << (n.bit_length() - 3)  # the unit of the third significant bit
    return -(-n // step) * step


def power_of_two_parts(n: int) -> list[slice]:
    """``range(n)`` cut into consecutive slices whose lengths are distinct powers of two,
    largest first (``7`` → ``[0:4], [4:6], [6:7]``); ``[]`` for 0."""
    if n < 0:
        raise ValueError(f"a batch has no negative size: {n}")
    parts: list[slice] = []
    start = 0
    for bit in reversed(range(n.bit_length())):
        if n & (1 << bit):
            parts.append(slice(start, start + (1 << bit)))
            start += 1 << bit
    return parts


def frame_parts(n: int, device_type: str) -> list[slice]:
    """How ``n`` frames go through a model on a ``device_type`` device: in
    :func:`power_of_two_parts` on the CPU (oneDNN's kernels), whole elsewhere."""
    return power_of_two_parts(n) if device_type == "cpu" else [slice(0, n)]
