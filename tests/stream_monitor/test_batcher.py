"""Size-or-deadline batching on a real worker thread."""

from __future__ import annotations

import asyncio
import threading
from typing import Iterator

import pytest

from stream_monitor.inference.batcher import Batcher, Shed
from stream_monitor.inference.worker import InferenceWorker


@pytest.fixture
def worker() -> Iterator[InferenceWorker]:
    w = InferenceWorker()
    w.start()
    yield w
    w.stop()


def test_size_release_mixes_streams(worker: InferenceWorker) -> None:
    seen: list[list[str]] = []

    def run(batch: list[str]) -> list[str]:
        assert threading.current_thread().name == "inference"
        seen.append(batch)
        return [r.upper() for r in batch]

    async def main() -> list[str]:
        b = Batcher("t", worker, run, max_batch=4, max_wait_s=10.0)
        futs = [b.submit(f"{s}{i}") for i in range(2) for s in ("a", "b")]
        return list(await asyncio.gather(*futs))

    assert asyncio.run(main()) == ["A0", "B0", "A1", "B1"]
    assert seen == [["a0", "b0", "a1", "b1"]]  # released by size long before the 10 s deadline


def test_deadline_releases_a_partial_batch(worker: InferenceWorker) -> None:
    sizes: list[int] = []

    async def main() -> None:
        b = Batcher("t", worker, lambda batch: batch, max_batch=8, max_wait_s=0.05,
                    on_batch=lambda n, s: sizes.append(n))
        assert await asyncio.wait_for(asyncio.gather(b.submit(1), b.submit(2)), 2.0) == [1, 2]

    asyncio.run(main())
    assert sizes == [2]


def test_batches_grow_while_the_worker_is_busy(worker: InferenceWorker) -> None:
    gate = threading.Event()
    sizes: list[int] = []

    def run(batch: list[int]) -> list[int]:
        gate.wait(5)
        sizes.append(len(batch))
        return batch

    async def main() -> None:
        b = Batcher("t", worker, run, max_batch=16, max_wait_s=0.0)
        first = b.submit(0)
        await asyncio.sleep(0.05)          # batch [0] is on the worker, blocked
        rest = [b.submit(i) for i in range(1, 10)]
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(first, *rest)

    asyncio.run(main())
    assert sizes == [1, 9]


def test_overload_sheds_the_oldest_and_counts(worker: InferenceWorker) -> None:
    gate = threading.Event()
    shed: list[int] = []

    async def main() -> list[object]:
        b = Batcher("t", worker, lambda batch: (gate.wait(5), batch)[1], max_batch=2, max_wait_s=0.0,
                    max_pending=3, on_shed=shed.append)
        futs = [b.submit(0)]
        await asyncio.sleep(0.05)          # 0 is running; the rest wait
        futs += [b.submit(i) for i in range(1, 7)]
        gate.set()
        return list(await asyncio.gather(*futs, return_exceptions=True))

    results = asyncio.run(main())
    assert shed == [1, 2, 3]
    assert all(isinstance(r, Shed) for r in results[1:4])
    assert results[0] == 0 and results[4:] == [4, 5, 6]


def test_a_failing_batch_fails_its_requests_only(worker: InferenceWorker) -> None:
    def run(batch: list[int]) -> list[int]:
        if 13 in batch:
            raise RuntimeError("boom")
        return batch

    async def main() -> tuple[object, object]:
        b = Batcher("t", worker, run, max_batch=1, max_wait_s=0.0)
        bad, good = b.submit(13), b.submit(7)
        return tuple(await asyncio.gather(bad, good, return_exceptions=True))  # type: ignore[return-value]

    bad, good = asyncio.run(main())
    assert isinstance(bad, RuntimeError) and good == 7


def test_bad_settings() -> None:
    with pytest.raises(ValueError):
        Batcher("t", InferenceWorker(), lambda b: b, max_batch=4, max_pending=2)
