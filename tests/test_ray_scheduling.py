"""The Ray driver's bookkeeping (nest_rt.ray._RunOnRay.encode_chunks) on a scripted stand-in for
Ray: which worker gets which chunk, what a lost worker, a worker that cannot start or none that
starts does to the run. Real Ray cannot be made to fail these ways on cue; tests/test_ray.py runs
the same code on real Ray with real faults (a killed worker, a killed driver)."""
from __future__ import annotations

import types

import pytest
from tqdm.auto import tqdm

from nest_rt import ray as nest_ray
from nest_rt.errors import RunStateError
from nest_rt.runs import ChunkDone


class RayActorError(Exception):
    pass


class ObjectLostError(Exception):
    pass


class RayTaskError(Exception):
    def __init__(self, cause):
        super().__init__(str(cause))
        self.cause = cause


class Ref:
    """An object reference: a value, or the error ``ray.get`` raises for it; never ready when
    ``pending`` (a worker the cluster cannot place)."""

    def __init__(self, value=None, error=None, pending=False):
        self.value, self.error, self.pending = value, error, pending


class Stream:
    """A streaming generator's handle: one ref per item the worker yields."""

    def __init__(self, refs: list[Ref]):
        self.refs = refs

    def __next__(self):
        if not self.refs:
            raise StopIteration
        return self.refs.pop(0)


class FakeRay:
    """The part of Ray's API that encode_chunks uses. ``wait`` gives a worker's readiness first
    (loading models is quick here), then the streams in turn (workers compute side by side), or
    nothing (the timeout) when no reference is ready."""

    exceptions = types.SimpleNamespace(RayActorError=RayActorError, ObjectLostError=ObjectLostError,
                                       RayTaskError=RayTaskError)

    def __init__(self):
        self.killed: list[tuple[str, bool]] = []
        self.shut_down = False
        self.waits: list[float | None] = []
        self.turns = 0
        self.last_turn: dict[int, int] = {}  # id of a stream -> when wait last gave it

    def wait(self, refs, num_returns, timeout):
        self.waits.append(timeout)
        ready = [ref for ref in refs if not getattr(ref, "pending", False)]
        ready.sort(key=lambda ref: (isinstance(ref, Stream), self.last_turn.get(id(ref), -1)))
        if ready:
            self.turns += 1
            self.last_turn[id(ready[0])] = self.turns
        return ready[:1], ready[1:]

    def get(self, ref: Ref):
        if ref.error is not None:
            raise ref.error
        return ref.value

    def kill(self, actor, no_restart=True):  # Ray's default
        self.killed.append((actor.name, no_restart))

    def shutdown(self):
        self.shut_down = True


class Worker:
    """A scripted actor. ``starts``: what each readiness check gives ('ok', 'fails', 'never'), the
    first at the start and one more after each lost chunk (Ray's restart). ``chunks``: what each
    chunk given to it does ('ok': a block, then ChunkDone; 'slow': eight blocks, then ChunkDone;
    'dies': the worker is lost after its first block; 'raises': the worker's own error)."""

    def __init__(self, name: str, chunks: list[str], starts: list[str] | None = None):
        self.name, self.chunks, self.starts = name, list(chunks), list(starts or ["ok"])
        self.given: list[int] = []
        self.ready = types.SimpleNamespace(remote=self._ready)
        self.encode = types.SimpleNamespace(options=self._options)

    def _options(self, num_returns):
        assert num_returns == "streaming"  # one reference per block, as encode_chunks reads them
        return types.SimpleNamespace(remote=self._encode)

    def _ready(self) -> Ref:
        start = self.starts.pop(0) if self.starts else "ok"
        if start == "never":
            return Ref(pending=True)
        return Ref(["cpu"]) if start == "ok" else Ref(error=RayActorError(f"{self.name}: models failed to load"))

    def _encode(self, chunk: int, start: int, stop: int) -> Stream:
        self.given.append(chunk)
        what = self.chunks.pop(0) if self.chunks else "ok"
        block = Ref((0, list(range(start, stop)), self.name))
        if what in ("ok", "slow"):
            return Stream([block] * (8 if what == "slow" else 1) + [Ref(ChunkDone(chunk, []))])
        if what == "dies":
            return Stream([block, Ref(error=RayActorError(f"{self.name} died"))])
        return Stream([Ref(error=RayTaskError(ValueError(f"chunk {chunk}: an undecodable image")))])


def run(workers: list[Worker], chunks: int, started_here: bool = False):
    """encode_chunks over ``chunks`` chunks of two images; returns (items, log, ray, engine)."""
    ray, log = FakeRay(), []
    engine = nest_ray._RunOnRay(ray, workers, started_here, inputs_ref=None, log=log.append)
    todo = [(chunk, 2 * chunk, 2 * chunk + 2) for chunk in range(chunks)]
    with tqdm(total=2 * chunks, disable=True) as bar:
        items = list(engine.encode_chunks(todo, bar))
    return items, log, ray, engine


def done_chunks(items) -> list[int]:
    return sorted(item.chunk for item in items if isinstance(item, ChunkDone))


def test_chunks_are_shared_and_each_finished_once():
    workers = [Worker("a", []), Worker("b", [])]
    items, log, ray, engine = run(workers, 6, started_here=True)
    assert done_chunks(items) == list(range(6))
    assert sorted(workers[0].given + workers[1].given) == list(range(6)) and workers[0].given and workers[1].given
    assert engine.devices == {"cpu"} and not log
    assert sorted(ray.killed) == [("a", True), ("b", True)] and ray.shut_down  # stopped at the end


def test_a_lost_worker_s_chunk_is_done_again_by_a_worker():
    workers = [Worker("a", ["dies"]), Worker("b", [])]
    items, log, ray, _ = run(workers, 4)
    assert done_chunks(items) == list(range(4))
    lost_chunk = workers[0].given[0]
    assert (workers[0].given + workers[1].given).count(lost_chunk) == 2  # once lost, once finished
    assert any(f"a worker was lost (RayActorError); chunk {lost_chunk} is done again" in line for line in log)
    assert not ray.shut_down  # a Ray the run did not start is left running


def test_a_worker_that_loses_its_chunks_three_times_in_a_row_leaves_the_pool():
    workers = [Worker("a", ["dies"] * nest_ray.MAX_CHUNK_ATTEMPTS), Worker("b", ["ok"] * 10)]
    items, log, ray, _ = run(workers, 6)
    assert done_chunks(items) == list(range(6))
    assert ray.killed == [("a", True), ("a", True), ("b", True)]  # killed for good during the run, then at its end
    assert len(workers[0].given) == nest_ray.MAX_CHUNK_ATTEMPTS  # given nothing after leaving
    assert any(f"lost {nest_ray.MAX_CHUNK_ATTEMPTS} chunks in a row and is left out" in line for line in log)
    # each lost chunk went to the other worker, not back to the failing one: no chunk neared its limit
    assert set(workers[0].given) <= set(workers[1].given) and len(set(workers[0].given)) == 3


def test_a_chunk_that_loses_every_worker_it_meets_stops_the_run():
    workers = [Worker(name, ["dies"] * 5) for name in "abc"]
    with pytest.raises(RunStateError, match=rf"chunk 0 \(images 0:2\) lost its worker {nest_ray.MAX_CHUNK_ATTEMPTS} "
                                            r"times \(.* died\)"):
        run(workers, 1)


def test_a_worker_that_cannot_start_is_left_out():
    workers = [Worker("a", [], starts=["fails"]), Worker("b", [])]
    items, log, _, _ = run(workers, 3)
    assert done_chunks(items) == [0, 1, 2] and workers[0].given == [] and workers[1].given == [0, 1, 2]
    assert log == ["Ray: a worker could not start and is left out: a: models failed to load"]


def test_no_worker_left_stops_the_run_with_the_last_reason():
    workers = [Worker("a", [], starts=["fails"]), Worker("b", [], starts=["fails"])]
    with pytest.raises(RunStateError, match="no Ray worker is left, the last failed with: b: models failed to load"):
        run(workers, 2)


def test_no_worker_starting_stops_the_run_after_the_start_timeout():
    """Waits with no chunk in flight are bounded by WORKER_START_TIMEOUT_S; waits for a chunk's
    next block are not (a chunk may take long)."""
    workers = [Worker("a", [], starts=["never"])]
    with pytest.raises(RunStateError, match=f"no Ray worker started in {nest_ray.WORKER_START_TIMEOUT_S} s"):
        run(workers, 2)
    workers = [Worker("a", [])]
    _, _, ray, _ = run(workers, 2)
    assert ray.waits[0] == nest_ray.WORKER_START_TIMEOUT_S and None in ray.waits


def test_a_worker_s_own_error_stops_the_run_as_it_would_locally():
    workers = [Worker("a", ["raises"])]
    with pytest.raises(ValueError, match="chunk 0: an undecodable image"):
        run(workers, 2)


def test_a_worker_restarted_by_ray_gets_chunks_again():
    """After a lost chunk the worker is asked again whether it is ready (Ray restarts it); once it
    is, it takes chunks again, the one it lost first, as no other worker could."""
    workers = [Worker("a", ["dies", "ok", "ok"])]
    items, _, _, _ = run(workers, 3)
    assert done_chunks(items) == [0, 1, 2] and workers[0].given == [0, 0, 1, 2]


def test_a_lost_chunk_waits_for_a_busy_worker_rather_than_return_to_the_failing_one():
    """The last chunks of a run: the failing worker is free again before the healthy one, busy
    with a long chunk, is; the lost chunk waits for the healthy one instead of killing the run."""
    workers = [Worker("a", ["dies"] * 5), Worker("b", ["slow"])]
    items, _, _, _ = run(workers, 2)
    assert done_chunks(items) == [0, 1] and workers[0].given == [0] and workers[1].given == [1, 0]
