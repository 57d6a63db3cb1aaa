"""nest_rt on a Ray cluster (the optional ``ray`` extra; nothing else in nest_rt imports this).

Two entry points:

- ``RayEngine``: ``nest-rt encode ... --engine ray`` runs the chunks of an encode run on Ray actors.
  Each actor opens the bundle once and holds the run's models (the backbone shared by all of
  them, as locally); it reads its chunk's images itself and streams the responses back, one
  block at a time as they are computed (a Ray streaming generator). The driver
  (the ``nest-rt encode`` process) plans the run, writes every response row and records every
  finished chunk, exactly as a local run does, so the files are byte for byte a local run's and
  a killed driver resumes from its finished chunks. Where things must live: the bundle and the
  input images at the same path on every node (a shared filesystem, or copies); the output only
  on the driver's machine (workers send it their responses).
  A worker that dies (its process killed, its node lost) is restarted by Ray, and its chunk goes
  to the next free worker.
- ``Encoder``: a callable class for Ray Data pipelines, ``ds.map_batches(Encoder,
  fn_constructor_kwargs={...}, concurrency=..., batch_size=...)``: a batch's image column in,
  one response column per model output (per array: fsaverage's ``_lh`` and ``_rh``) out.
"""
from __future__ import annotations

import collections
import contextlib
import os
import socket
import signal
import threading
from typing import Any

import numpy as np

from . import interrupts
from .errors import InvalidParameterError, MissingExtraError, ResourceError, RunStateError
from .limits import CONNECT_TIMEOUT_S

# A chunk whose worker died is given to another worker at most this many times: a chunk that
# kills every worker it meets (an image that crashes the decoder) must stop the run, not loop.
# A worker that loses this many chunks in a row leaves the run's pool.
MAX_CHUNK_ATTEMPTS = 3
# How often Ray starts a worker's process again over a run (killed, node lost) before giving up
# on it: finite, so that a worker that crashes while loading its models does not restart forever.
MAX_WORKER_RESTARTS = 10
# With no chunk in flight, how long the run waits for a worker to start before it stops: a cluster
# that cannot place any worker (too few CPUs or GPUs for what each asks) must not wait forever.
WORKER_START_TIMEOUT_S = 600
# Workers (and threads per worker) of a run: more than any cluster's CPUs, so a typo, not a plan
# (each worker is an actor that loads every model of the run).
MAX_WORKERS = 1024


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise MissingExtraError("--engine ray needs Ray: pip install 'nest-rt[ray]'") from exc
    return ray


def _reason(error: Exception) -> str:
    """A Ray error in one line: its last one (Ray puts the worker's traceback before it)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


class RayEngine:
    """What ``--engine ray`` adds to an encode run: where the Ray cluster is and how many
    workers to start there. ``address`` None starts a local Ray instance (stopped at the end);
    ``workers`` None: one per ``threads`` CPUs of the cluster."""

    def __init__(self, address: str | None = None, workers: int | None = None, threads: int | None = None,
                 gpus_per_worker: float = 0.0):
        for name, value in (("--workers", workers), ("--threads", threads)):
            if value is not None and not 1 <= value <= MAX_WORKERS:
                raise InvalidParameterError(f"{name} must be 1 to {MAX_WORKERS}, got {value}")
        if not 0 <= gpus_per_worker <= MAX_WORKERS:  # and not NaN
            raise InvalidParameterError(f"--gpus-per-worker must be 0 to {MAX_WORKERS}, got {gpus_per_worker}")
        _import_ray()  # a missing extra fails before the run's folder is made
        self.address, self.workers, self.threads, self.gpus_per_worker = address, workers, threads, gpus_per_worker

    def describe(self) -> dict[str, Any]:
        return {"kind": "ray", "address": self.address or "local", "workers": self.workers,
                "threads_per_worker": self.threads, "gpus_per_worker": self.gpus_per_worker}

    @contextlib.contextmanager
    def connected(self):
        """Join the cluster (or start a local Ray instance, stopped at the end) for the length of
        the block. An encode run connects before it touches --out, so that a cluster that does not
        answer fails in seconds with one line, not after minutes and with a half-made run folder."""
        ray = _import_ray()
        self._started_here = not ray.is_initialized()
        if self._started_here:
            _init(ray, self.address)
        try:
            yield
        finally:
            if self._started_here and ray.is_initialized():
                ray.shutdown()

    def start(self, bundle_dir, model_specs: list[str], imageset: str, device: str, num_threads: int | None,
              precision: str, inputs, log) -> "_RunOnRay":
        """Start the workers on the cluster joined by ``connected()``."""
        ray = _import_ray()
        return self._start_workers(ray, self._started_here, bundle_dir, model_specs, imageset, device, num_threads,
                                   precision, inputs, log)

    def _start_workers(self, ray, started_here: bool, bundle_dir, model_specs: list[str], imageset: str, device: str,
                       num_threads: int | None, precision: str, inputs, log) -> "_RunOnRay":
        resources = ray.cluster_resources()
        cpus, gpus = max(1, int(resources.get("CPU", 1))), float(resources.get("GPU", 0))
        threads = self.threads or num_threads or 1
        workers = self.workers or max(1, cpus // threads)
        if self.gpus_per_worker > 0:
            if gpus < self.gpus_per_worker:
                raise InvalidParameterError(f"--gpus-per-worker {self.gpus_per_worker:g}, but the Ray cluster has "
                                            f"{gpus:g} GPUs")
            workers = self.workers or min(workers, int(gpus // self.gpus_per_worker))
        self.workers, self.threads = workers, threads
        if threads > cpus or workers * min(threads, cpus) > cpus:
            log(f"warning: {workers} workers of {threads} thread(s) ask for more than the cluster's {cpus} CPUs; "
                "the workers beyond them wait for CPUs, and threads beyond the cores slow the run down")
        worker_class = ray.remote(max_restarts=MAX_WORKER_RESTARTS)(_ChunkWorker).options(
            num_cpus=min(threads, cpus), num_gpus=self.gpus_per_worker)
        shared_inputs = ray.put(inputs)  # the image list once in the object store, not once per worker
        actors = [worker_class.remote(os.path.abspath(bundle_dir), model_specs, imageset, device, threads, precision,
                                      shared_inputs) for _ in range(workers)]
        log(f"Ray: {workers} workers of {threads} thread(s)"
            + (f" and {self.gpus_per_worker:g} GPU(s)" if self.gpus_per_worker else "")
            + f" on a cluster of {cpus} CPUs" + (f" and {gpus:g} GPUs" if gpus else "")
            + (f" at {self.address}" if self.address else " (local)"))
        return _RunOnRay(ray, actors, started_here, shared_inputs, log)


def _init(ray, address: str | None) -> None:
    """ray.init, with a bounded wait for a cluster's address (--ray-address, else $RAY_ADDRESS)."""
    named = f"--ray-address {address}" if address else f"RAY_ADDRESS={os.environ.get('RAY_ADDRESS', '')}"
    address = address or os.environ.get("RAY_ADDRESS") or None
    joining = address not in (None, "auto", "local")
    if joining:
        _check_reachable(address, named)
    # one try of Ray's GCS client, not 20: the address answered just now (a value the user set is kept)
    wait = {"RAY_gcs_server_port_wait_time_s": os.environ.get("RAY_gcs_server_port_wait_time_s", "1")}
    on_sigterm = signal.getsignal(signal.SIGTERM)
    try:
        with _environment(wait if joining else {}):
            ray.init(address=address, include_dashboard=False, logging_level="ERROR",
                     log_to_driver=False, configure_logging=False)
    except ConnectionError as exc:
        raise ResourceError(f"{named}: no Ray cluster answers there ({_reason(exc)})") from None
    finally:
        if on_sigterm is not None and threading.current_thread() is threading.main_thread():
            # ray.init replaces it with sys.exit(15); keep the caller's (nest-rt: stop as on Ctrl-C, exit 143)
            signal.signal(signal.SIGTERM, on_sigterm)


def _check_reachable(address: str, named: str) -> None:
    """Refuse an address (host:port, or ray://host:port) that accepts no connection within CONNECT_TIMEOUT_S."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise InvalidParameterError(f"{named}: expected HOST:PORT (for example 10.0.0.5:6379)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        reason = f"no answer in {CONNECT_TIMEOUT_S} s" if isinstance(exc, TimeoutError) else (exc.strerror or exc)
        raise ResourceError(f"{named}: no Ray cluster answers there ({reason}); "
                            "start one (ray start --head) or leave out --ray-address and RAY_ADDRESS "
                            "for a local Ray instance") from None


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    """These environment variables set for the length of the block, then put back."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class _RunOnRay:
    def __init__(self, ray, actors: list, started_here: bool, inputs_ref, log):
        self.ray, self.actors, self.started_here, self.log = ray, actors, started_here, log
        # held for the whole run: Ray restarts a dead worker by running its constructor again,
        # with this object as its argument, and deletes objects nobody holds
        self.inputs_ref = inputs_ref
        self.devices: set[str] = set()  # where the workers' models run, as they report it

    def encode_chunks(self, todo, bar):
        """Yield the items of the chunks (blocks, then each chunk's ChunkDone; see
        runs.chunk_items) as the workers stream them: one chunk in flight per worker, each block
        passed on as soon as it is computed, so that neither a worker nor the driver holds a
        chunk's responses (a chunk of 256 images of ten EEG subjects is 361 MB).

        A worker gets a chunk only once it has started (its models loaded), and again after Ray
        has restarted it; a worker that cannot start is left out, and the run stops only when no
        worker is left or none starts in WORKER_START_TIMEOUT_S."""
        from .runs import ChunkDone
        dispatch = _ChunkDispatch(self.ray, self.actors, todo, self.log)
        try:
            while dispatch.queue or dispatch.streams:
                interrupts.raise_if_stopped()  # a stop Python dropped while waiting on Ray
                dispatch.hand_out_chunks()
                dispatch.require_a_worker()
                bar.set_postfix(workers_alive=len(dispatch.idle) + len(dispatch.streams), refresh=False)
                ready = dispatch.wait()
                if ready in dispatch.starting:
                    self.devices.update(dispatch.worker_started(ready))
                    continue
                item = dispatch.next_item(ready)
                if item is None:  # its worker was lost: the chunk is queued again
                    continue
                if isinstance(item, ChunkDone):  # the chunk's last item: its worker is free
                    bar.update(dispatch.chunk_done(ready))
                yield item
        finally:
            for actor in self.actors:
                self.ray.kill(actor)
            if self.started_here:
                self.ray.shutdown()


class _ChunkDispatch:
    """The driver's bookkeeping of one run on Ray: which chunks wait, which worker streams which
    chunk, which workers are starting or idle, and how often each chunk and worker was lost."""

    def __init__(self, ray, actors: list, todo, log):
        self.ray, self.log = ray, log
        self.lost_worker = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError)
        self.queue = collections.deque(todo)
        self.starting = {actor.ready.remote(): actor for actor in actors}  # readiness -> worker
        self.idle: collections.deque = collections.deque()
        self.streams: dict = {}  # a chunk's stream of items -> (chunk, start, stop, worker)
        self.attempts: collections.Counter = collections.Counter()  # per chunk
        self.losses: collections.Counter = collections.Counter()  # per worker, since its last chunk done
        self.lost_on: dict = {}  # chunk -> the workers that lost it
        self.last_error: Exception | None = None

    def hand_out_chunks(self) -> None:
        """Start a chunk on every idle worker that may take one (see _next_chunk_for)."""
        started = set(self.idle) | {entry[3] for entry in self.streams.values()}
        for actor in list(self.idle):
            entry = _next_chunk_for(actor, self.queue, self.lost_on, started)
            if entry is None:
                continue
            self.idle.remove(actor)
            chunk, start, stop = entry
            self.attempts[chunk] += 1
            stream = actor.encode.options(num_returns="streaming").remote(chunk, start, stop)
            self.streams[stream] = (chunk, start, stop, actor)

    def require_a_worker(self) -> None:
        if not self.streams and not self.starting:
            raise RunStateError(f"no Ray worker is left, the last failed with: {_reason(self.last_error)}; "
                                "finished chunks are kept")

    def wait(self):
        """The first stream with an item, or worker readiness, to come; with no chunk in flight,
        a worker must start within WORKER_START_TIMEOUT_S."""
        ready, _ = self.ray.wait(list(self.streams) + list(self.starting), num_returns=1,
                                 timeout=None if self.streams else WORKER_START_TIMEOUT_S)
        if not ready:
            raise RunStateError(f"no Ray worker started in {WORKER_START_TIMEOUT_S} s: can the cluster "
                                "place a worker (see --workers, --threads, --gpus-per-worker)? Finished "
                                "chunks are kept")
        return ready[0]

    def worker_started(self, readiness) -> list[str]:
        """A worker answered: idle if it started (its devices returned), left out if it could not."""
        actor = self.starting.pop(readiness)
        try:
            devices = self.ray.get(readiness)
        except self.lost_worker as exc:  # its models failed to load, or it died too often
            self.last_error = exc
            self.log(f"Ray: a worker could not start and is left out: {_reason(exc)}")
            return []
        self.idle.append(actor)
        return devices

    def next_item(self, stream):
        """The stream's next item; None if its worker was lost (the chunk is queued again). The
        worker's own error (e.g. a StimulusError) is raised as a local run raises it."""
        chunk = self.streams[stream][0]
        try:
            reference = next(stream, None)
            if reference is None:
                raise RunStateError(f"chunk {chunk}: its Ray worker ended it without finishing it")
            return self.ray.get(reference)
        except self.lost_worker as exc:
            self._chunk_lost(stream, exc)
            return None
        except self.ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            raise (cause if isinstance(cause, Exception) else exc) from None

    def _chunk_lost(self, stream, exc: Exception) -> None:
        """The chunk goes back to the queue (its rows are written again), unless it has been lost
        MAX_CHUNK_ATTEMPTS times; its worker waits to be restarted, or after MAX_CHUNK_ATTEMPTS
        losses in a row is left out."""
        chunk, start, stop, actor = self.streams.pop(stream)
        self.last_error = exc
        if self.attempts[chunk] >= MAX_CHUNK_ATTEMPTS:
            raise RunStateError(f"chunk {chunk} (images {start}:{stop}) lost its worker "
                                f"{self.attempts[chunk]} times ({_reason(exc)}); finished chunks are kept") from None
        self.queue.appendleft((chunk, start, stop))  # see _next_chunk_for
        self.lost_on.setdefault(chunk, set()).add(actor)
        self.losses[actor] += 1
        if self.losses[actor] < MAX_CHUNK_ATTEMPTS:
            self.starting[actor.ready.remote()] = actor  # free again once Ray has restarted it
            self.log(f"Ray: a worker was lost ({type(exc).__name__}); chunk {chunk} is done again")
        else:
            self.ray.kill(actor, no_restart=True)
            self.log(f"Ray: a worker lost {self.losses[actor]} chunks in a row and is left out; chunk "
                     f"{chunk} is done again")

    def chunk_done(self, stream) -> int:
        """The chunk's last item came: its worker is free. Returns the chunk's image count."""
        _, start, stop, actor = self.streams.pop(stream)
        self.losses[actor] = 0
        self.idle.append(actor)
        return stop - start


def _next_chunk_for(actor, queue: collections.deque, lost_on: dict, started: set) -> tuple[int, int, int] | None:
    """Take from the queue the first chunk for this worker: one it has not lost, or one that every
    started worker has lost (anyone may try it again); None leaves the worker idle for now. So a
    chunk lost by a failing worker is done by another, and the failing worker meets other chunks:
    it is the worker (after MAX_CHUNK_ATTEMPTS losses in a row) that leaves, not the run that stops."""
    for position, entry in enumerate(queue):
        lost_by = lost_on.get(entry[0], set())
        if actor not in lost_by or started <= lost_by:
            del queue[position]
            return entry
    return None


class _ChunkWorker:
    """One Ray actor: the bundle opened once, the run's models loaded once."""

    def __init__(self, bundle_dir: str, model_specs: list[str], imageset: str, device: str, threads: int,
                 precision: str, inputs):
        from .api import NEST
        from .runs import planned_outputs
        nest = NEST(bundle_dir, num_threads=threads, precision=precision)
        self.models = [output.model for output in planned_outputs(nest, model_specs, imageset, device)]
        self.inputs, self.device = inputs, device

    def ready(self) -> list[str]:
        """Answers once the constructor has run: the devices this worker's models run on."""
        return sorted({model.device for model in self.models})

    def encode(self, chunk: int, start: int, stop: int):
        """A Ray streaming generator: each block goes to the driver as it is computed."""
        from .runs import chunk_items
        yield from chunk_items(self.inputs, self.models, chunk, start, stop, self.device)


class Encoder:
    """Responses of nest_rt models as Ray Data columns.

    ::

        ds = ray.data.read_images("images/", mode="RGB")
        responses = ds.map_batches(Encoder, fn_constructor_kwargs={"bundle": "/shared/nest_bundle",
                                   "models": ["eeg:subjects=1-2", "fwrf:subjects=1:roi=V1"]},
                                   concurrency=4, batch_size=64)

    ``models`` takes ``nest-rt encode --model`` specs. Each output becomes a column named as its
    files in an encode run (``eeg-things_eeg_2-vit_b_32_sub-01``; fsaverage adds ``_lh`` and
    ``_rh``) holding float32 [B, ...] responses; the batch's other columns are kept. The bundle
    is opened on the first batch, in the worker, so the instance pickles small. ``image_column``
    holds uint8 images, [B, H, W, 3] or [B, 3, H, W] (or a list of them); ``center_crop`` crops
    non-square ones to their central square as ``NEST.encode`` does.
    """

    def __init__(self, bundle: str, models: list[str], image_column: str = "image", device: str = "auto",
                 num_threads: int | None = None, precision: str = "fp32", center_crop: bool = False):
        if isinstance(models, str) or not models:
            raise InvalidParameterError(f"models must be a non-empty list of model specs, got {models!r}")
        self.settings = {"bundle": str(bundle), "models": list(models), "device": device,
                         "num_threads": num_threads, "precision": precision}
        self.image_column, self.center_crop = image_column, center_crop
        self._outputs = None

    def _load(self):
        from .api import NEST
        from .runs import planned_outputs
        settings = self.settings
        nest = NEST(settings["bundle"], num_threads=settings["num_threads"], precision=settings["precision"])
        return planned_outputs(nest, settings["models"], "ray", settings["device"])

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from .images import Stimulus
        from .encode_loop import as_arrays, encode_models
        if self.image_column not in batch:
            raise InvalidParameterError(f"image_column {self.image_column!r} is not a column of the batch "
                                        f"(columns: {sorted(batch)})")
        if self._outputs is None:
            self._outputs = self._load()
        images = batch[self.image_column]
        if isinstance(images, np.ndarray) and images.dtype == object:  # images of several sizes
            images = list(images)
        responses = encode_models([output.model for output in self._outputs],
                                  Stimulus(images, name=self.image_column, center_crop=self.center_crop),
                                  device=self.settings["device"], show_progress=False)
        columns = {name: values for name, values in batch.items() if name != self.image_column}
        for output, values in zip(self._outputs, responses):
            for array, block in zip(output.shapes, as_arrays(values)):
                columns[output.name if array == "responses" else f"{output.name}_{array}"] = block
        return columns
