"""Batch sizes that keep the set of tensor shapes small: powers of two.

Why: on the CPU, PyTorch runs convolutions through oneDNN, which compiles (JIT) a kernel for
every input shape it meets and keeps the last 1024 in a cache. A batch dimension that takes
every value (MTCNN's candidate boxes, the frames a detector lane collects) keeps that cache
full of one-off kernels: in the soak it was replaced about 7 times a second, and a worker
that had once carried twice its streams kept the kernels of that peak (RELIABILITY.md,
"Memory"). Powers of two bound the shapes to ``log2(max batch) + 1`` per layer and input
size.

Two ways, for two kinds of model: :func:`padded_size` pads a batch up (for small nets where
padding costs less than splitting: MTCNN's R- and O-nets), :func:`power_of_two_parts` splits
it (for everything else: the same rows, no wasted work).
"""

from __future__ import annotations


def padded_size(n: int) -> int:
    """The smallest power of two ``>= n`` (``n`` itself for 0 and 1)."""
    return n if n <= 1 else 1 << (n - 1).bit_length()


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
