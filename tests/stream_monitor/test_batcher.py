"""Size-or-deadline batching on a real worker thread, fair across streams."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass
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
        b = Batcher("t", worker, run, max_batch=4, max_wait_s=10.0, key=lambda r: r[0])  # stream = first letter
        futs = [b.submit(f"{s}{i}") for i in range(2) for s in ("a", "b")]
        return list(await asyncio.gather(*futs))

    assert asyncio.run(main()) == ["A0", "B0", "A1", "B1"]
    assert seen == [["a0", "b0", "a1", "b1"]]  # released by size long before the 10 s deadline


def test_deadline_releases_a_partial_batch(worker: InferenceWorker) -> None:
    sizes: list[int] = []

    async def main() -> None:
        b: Batcher[int, int] = Batcher("t", worker, lambda batch: batch, max_batch=8, max_wait_s=0.05,
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


# Fairness across streams ---------------------------------------------------------------


@dataclass(frozen=True)
class Req:
    """A request shaped like the engine's (``Frame``/``Clip`` carry ``stream_id``)."""

    stream_id: str
    n: int

    def __repr__(self) -> str:
        return f"{self.stream_id}{self.n}"


def _reqs(stream: str, count: int, start: int = 0) -> list[Req]:
    return [Req(stream, i) for i in range(start, start + count)]


def test_batches_take_streams_in_turn_and_resume_where_they_stopped(worker: InferenceWorker) -> None:
    gate = threading.Event()
    seen: list[list[Req]] = []

    def run(batch: list[Req]) -> list[Req]:
        gate.wait(5)
        seen.append(batch)
        return batch

    async def main() -> list[Req]:
        b = Batcher("t", worker, run, max_batch=4, max_wait_s=0.0)
        first = b.submit(Req("x", 0))
        await asyncio.sleep(0.05)          # x0 holds the worker; the rest queue up
        futs = [b.submit(r) for r in _reqs("A", 6) + _reqs("B", 3) + _reqs("C", 3)]
        gate.set()
        return list(await asyncio.gather(first, *futs))

    asyncio.run(main())
    # A submitted six before B and C arrived, yet each batch takes one per stream in turn;
    # the second batch starts with B (after A, who went last), the third with C. A's
    # surplus only fills slots the others leave empty. Each stream stays in order.
    assert [[repr(r) for r in batch] for batch in seen] == [
        ["x0"], ["A0", "B0", "C0", "A1"], ["B1", "C1", "A2", "B2"], ["C2", "A3", "A4", "A5"]]


def test_the_deadline_runs_from_the_oldest_waiting_request(worker: InferenceWorker) -> None:
    seen: list[tuple[list[Req], float]] = []

    async def main() -> None:
        t0 = time.monotonic()

        def run(batch: list[Req]) -> list[Req]:
            seen.append((batch, time.monotonic() - t0))
            return batch

        b = Batcher("t", worker, run, max_batch=8, max_wait_s=0.3)
        a = b.submit(Req("A", 0))
        await asyncio.sleep(0.2)
        bb = b.submit(Req("B", 0))
        assert await asyncio.wait_for(asyncio.gather(a, bb), 3.0) == [Req("A", 0), Req("B", 0)]

    asyncio.run(main())
    # One partial batch of both streams, released 0.3 s after A's request (not after B's,
    # which would be 0.5 s, and not at once: 2 < max_batch).
    [(batch, at)] = seen
    assert batch == [Req("A", 0), Req("B", 0)]
    assert 0.28 <= at < 0.45, at


def test_overload_sheds_the_oldest_of_the_busiest_stream(worker: InferenceWorker) -> None:
    gate = threading.Event()
    shed: list[Req] = []
    seen: list[list[Req]] = []

    def run(batch: list[Req]) -> list[Req]:
        gate.wait(5)
        seen.append(batch)
        return batch

    async def main() -> dict[Req, object]:
        b = Batcher("t", worker, run, max_batch=4, max_wait_s=0.0, max_pending=8, on_shed=shed.append)
        first = b.submit(Req("x", 0))
        await asyncio.sleep(0.05)          # x0 holds the worker
        reqs = _reqs("A", 10) + [Req("B", 0), Req("C", 0), Req("B", 1)]
        futs = [b.submit(r) for r in reqs]
        assert b.pending == 8 and b.shed == 5
        gate.set()
        results = await asyncio.gather(first, *futs, return_exceptions=True)
        return dict(zip([Req("x", 0), *reqs], results))

    results = asyncio.run(main())
    # A flooded: every shed request is A's, oldest first, even those shed when B and C
    # arrived (global-FIFO shedding would have dropped A's too, but would also drop B0 or
    # C0 once they became the oldest of a long queue). B and C are all served.
    assert shed == _reqs("A", 5)
    assert all(isinstance(results[r], Shed) for r in shed)
    assert [r for r, res in results.items() if not isinstance(res, Shed)] == [
        Req("x", 0), *_reqs("A", 5, start=5), Req("B", 0), Req("C", 0), Req("B", 1)]
    assert [[repr(r) for r in batch] for batch in seen] == [["x0"], ["A5", "B0", "C0", "A6"], ["B1", "A7", "A8", "A9"]]


def test_shedding_ties_go_to_the_stream_holding_the_oldest_request(worker: InferenceWorker) -> None:
    gate = threading.Event()
    shed: list[Req] = []

    async def main() -> None:
        b = Batcher("t", worker, lambda batch: (gate.wait(5), batch)[1], max_batch=2, max_wait_s=0.0,
                    max_pending=4, on_shed=shed.append)
        futs = [b.submit(Req("x", 0))]
        await asyncio.sleep(0.05)
        for r in (Req("A", 0), Req("B", 0), Req("A", 1), Req("B", 1)):
            futs.append(b.submit(r))
        futs.append(b.submit(Req("C", 0)))  # A and B hold two each, A's oldest is older -> A0
        futs.append(b.submit(Req("B", 2)))  # B holds three -> B0
        # B and C hold two each and B1 is older than C0 -> B1 (a global FIFO would drop A1,
        # the oldest overall, although A is the quietest stream by now).
        futs.append(b.submit(Req("C", 1)))
        gate.set()
        await asyncio.gather(*futs, return_exceptions=True)

    asyncio.run(main())
    assert shed == [Req("A", 0), Req("B", 0), Req("B", 1)]


def test_a_flooding_stream_cannot_starve_the_others(worker: InferenceWorker) -> None:
    """200 requests from A at once and 10 more per tick, against 1 per tick from B and C."""
    batches: list[list[Req]] = []
    shed = Counter[str]()
    shed_a: list[int] = []
    latency: dict[str, list[float]] = {"B": [], "C": []}
    # For B and C: (request, number of batches the worker had started when it was submitted).
    submitted_at: list[tuple[Req, int]] = []

    def run(batch: list[Req]) -> list[Req]:
        batches.append(batch)
        time.sleep(0.01)                   # a batch costs 10 ms of "compute"
        return batch

    async def timed(b: Batcher[Req, Req], r: Req) -> None:
        t0 = time.monotonic()
        assert await b.submit(r) == r      # raises Shed if B's or C's request were dropped
        latency[r.stream_id].append(time.monotonic() - t0)

    def on_shed(r: Req) -> None:
        shed.update([r.stream_id])
        shed_a.append(r.n)

    async def main() -> list[object]:
        b = Batcher("t", worker, run, max_batch=4, max_wait_s=0.005, max_pending=16, on_shed=on_shed)
        flood = [b.submit(r) for r in _reqs("A", 200)]
        others = []
        for tick in range(30):
            flood += [b.submit(r) for r in _reqs("A", 10, start=200 + 10 * tick)]
            for s in ("B", "C"):
                submitted_at.append((Req(s, tick), len(batches)))
                others.append(asyncio.ensure_future(timed(b, Req(s, tick))))
            await asyncio.sleep(0.01)
        await asyncio.gather(*others)      # every B and C request was served
        return list(await asyncio.gather(*flood, return_exceptions=True))

    flood = asyncio.run(main())
    dropped = [i for i, res in enumerate(flood) if isinstance(res, Shed)]
    # Shedding fell on A alone, was counted once per request, and kept its backlog bounded.
    assert shed == Counter({"A": len(dropped)}) and len(dropped) >= 200 - 16
    # Round robin: a B or C request waits only for its own stream's earlier requests. It
    # joins the first batch to start after its submission (or the next, if one was already
    # released but not started), plus one batch per own request still ahead of it — never
    # behind A's backlog (a FIFO behind A's 16 pending would be 4 batches or more). Counting
    # what is ahead keeps this exact when a loaded machine delays the loop between ticks.
    where = {r: i for i, batch in enumerate(batches) for r in batch}
    for r, started in submitted_at:
        ahead = sum(1 for p, _ in submitted_at if p.stream_id == r.stream_id and p.n < r.n and where[p] >= started)
        assert where[r] <= started + 1 + ahead, (r, started, ahead, where[r])
    assert max(latency["B"] + latency["C"]) < 1.0
    # A's requests were shed oldest first, and those served ran in submission order.
    assert shed_a == sorted(shed_a) == dropped
    served_a = [r.n for batch in batches for r in batch if r.stream_id == "A"]
    assert served_a == sorted(served_a) and len(served_a) + len(dropped) == len(flood)


def test_requests_waiting_longer_than_max_age_are_shed(worker: InferenceWorker) -> None:
    """While the worker is held, 4 requests age past max_age_s and 2 fresh ones arrive: at the
    next batch the old ones are shed (counted, oldest first) and only the fresh ones run."""
    gate = threading.Event()
    shed: list[str] = []
    ran: list[list[str]] = []

    def run(batch: list[str]) -> list[str]:
        if batch == ["hold"]:
            gate.wait(5)
        ran.append(batch)
        return batch

    async def main() -> list[object]:
        b = Batcher("t", worker, run, max_batch=8, max_wait_s=0.0, max_pending=64, max_age_s=0.3,
                    on_shed=shed.append, key=lambda r: r[0])
        hold = b.submit("hold")
        await asyncio.sleep(0.05)  # "hold" is on the worker now
        old = [b.submit(r) for r in ("a0", "b0", "a1", "b1")]
        await asyncio.sleep(0.4)
        fresh = [b.submit(r) for r in ("a2", "b2")]
        gate.set()
        return list(await asyncio.gather(hold, *old, *fresh, return_exceptions=True))

    results = asyncio.run(main())
    assert results[0] == "hold" and all(isinstance(r, Shed) for r in results[1:5]) and results[5:] == ["a2", "b2"]
    assert sorted(shed) == ["a0", "a1", "b0", "b1"] and ran[1:] == [["a2", "b2"]]


def test_work_that_must_not_be_lost_is_never_shed(worker: InferenceWorker) -> None:
    """sheddable=False requests survive both the count and the age limit; sheddable ones of
    another stream are shed instead."""
    gate = threading.Event()
    shed: list[str] = []

    def run(batch: list[str]) -> list[str]:
        if batch == ["hold"]:
            gate.wait(5)
        return batch

    async def main() -> tuple[list[object], list[object]]:
        b = Batcher("t", worker, run, max_batch=2, max_wait_s=0.0, max_pending=4, max_age_s=0.2,
                    on_shed=shed.append, key=lambda r: r[0])
        hold = b.submit("hold")
        await asyncio.sleep(0.05)
        kept = [b.submit(f"f{i}", sheddable=False) for i in range(6)]  # over max_pending on its own
        live = [b.submit(f"l{i}") for i in range(2)]
        await asyncio.sleep(0.3)  # every request is now past max_age_s
        gate.set()
        await hold
        return (list(await asyncio.gather(*kept, return_exceptions=True)),
                list(await asyncio.gather(*live, return_exceptions=True)))

    kept, live = asyncio.run(main())
    assert kept == [f"f{i}" for i in range(6)]
    assert all(isinstance(r, Shed) for r in live) and sorted(shed) == ["l0", "l1"]
