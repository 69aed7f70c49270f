"""The study's runs as tasks on a Dask distributed cluster: ``python -m helpers run --scheduler
tcp://HOST:8786`` (a running scheduler and its workers) or ``--cluster local`` (a ``LocalCluster``
on this machine). Imported only then: the default path, a process pool on this machine, never
imports dask.

The client (:func:`helpers.runner.run_plan`) keeps everything else: the order (``reuses:``,
``after_all``), the fingerprints that skip unchanged runs, the ImageNet weights check and the
report at the end. Here only "start a run, wait for the first that ends" differs (:class:`DaskPool`):

- Workers share the file system with the client (repository, data, cache, Keras cache, reports):
  a task writes its run folder where the client reads it. :func:`check_workers` proves it at the
  start, on every worker, with a probe file the client writes in the study's folder.
- A profile's ``resources`` (``{GPU: 1}`` for ``paper``) go with every task, so a worker offering
  ``GPU=1`` runs one notebook at a time; no worker offering them is an error at once.
- Progress lines (cells, epochs) travel back as Dask events (``Worker.log_event``) on a topic the
  client subscribes to; SIGINT/SIGTERM on the client sets a ``distributed.Event`` that each
  worker's :class:`ClusterStop` polls, so its notebook is killed and recorded "interrupted".
- A worker that dies fails its run alone (``KilledWorker``), recorded "failed" with
  :data:`WORKER_DIED`; its papermill dies with it (``PR_SET_PDEATHSIG``, see
  :func:`helpers.runner.execute`). ``--cluster local`` sets the scheduler's ``allowed_failures``
  to 0 so the run is not retried on another worker; a scheduler of your own decides that by its
  ``distributed.scheduler.allowed-failures`` setting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator, Mapping

import distributed
from distributed.scheduler import KilledWorker

from helpers import runner
from helpers.plan import PlannedRun
from helpers.runner import ClusterError, RunOutcome, Stop

LOCAL = "local"
"""The only value of ``--cluster``: a ``LocalCluster`` on this machine."""
FORWARDED_ENV = ("HELPERS_DATA_DIR", "HELPERS_CACHE_DIR", "HELPERS_REPORTS_DIR", "KERAS_HOME", "KERAS_BACKEND",
                 "TF_ENABLE_ONEDNN_OPTS")
"""The client's environment variables that each notebook on a worker gets too (the same folders, backend,
TensorFlow CPU kernels: helpers.backend)."""
WORKERS_TIMEOUT_S = 60  # how long a scheduler may have no worker before the study gives up
CONNECT_TIMEOUT_S = 30
DRAIN_S = 3.0  # at the end, how long to wait for progress lines still on their way
CLIENT_GONE = "its Dask client leaving (the scheduler cancelled its task)"
"""What stopped a run whose client went away (``run.json``: "stopped by ..."), so no notebook runs on."""
WORKER_DIED = "its Dask worker died"
"""How ``run.json`` says a run failed because the worker running it died (killed, out of memory)."""


def gpu_count() -> int:
    """The GPUs ``nvidia-smi -L`` lists on this machine (0 without NVIDIA's driver)."""
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(line.startswith("GPU ") for line in listing.stdout.splitlines()) if listing.returncode == 0 else 0


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while the local cluster's processes start: they inherit it, so Ctrl-C in the
    terminal reaches only the client, which stops the notebooks itself (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def start_local_cluster(n_workers: int, gpus: int | None = None) -> distributed.LocalCluster:
    """A ``LocalCluster`` on loopback: ``n_workers`` worker processes of one thread each, or, on a
    machine with GPUs (``gpus``, default :func:`gpu_count`), one worker per GPU offering ``GPU=1``
    (its notebooks see only that GPU: ``CUDA_VISIBLE_DEVICES`` is the worker's number). A dead
    worker's task is not retried (``allowed_failures=0``): its run fails alone."""
    gpus = gpu_count() if gpus is None else gpus
    with _sigint_ignored():
        return distributed.LocalCluster(
            n_workers=gpus or max(1, n_workers), threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=None, memory_limit=0,  # the notebooks run in child processes, not in the worker
            resources={"GPU": 1} if gpus else None, scheduler_kwargs={"allowed_failures": 0},
            silence_logs=logging.ERROR,
        )


def _probe(probe: str, token: str, needed: list[str]) -> str:
    """On a worker: what it cannot see of the client's files ("" when it sees them all), and whether
    its helpers code is the client's."""
    try:
        seen = Path(probe).read_text(encoding="utf-8")
    except OSError as error:
        return f"cannot read the probe file {probe} ({error.strerror or error})"
    if seen != token:
        return f"reads another file at {probe} (not the client's folder)"
    missing = [place for place in needed if not Path(place).exists()]
    if missing:
        return "does not see " + ", ".join(missing)
    return ""


def _code_fingerprint() -> str:
    """On a worker: the fingerprint of the helpers code it runs (:func:`helpers.runner.code_fingerprint`)."""
    return runner.code_fingerprint()


def check_workers(client: distributed.Client, folder: Path, needed: list[Path],
                  resources: Mapping[str, float] | None) -> int:
    """Check that the cluster can run the study; return how many threads its workers have.

    At least one worker (within :data:`WORKERS_TIMEOUT_S`); every worker reads the probe file the
    client writes in the study's ``folder`` and sees the ``needed`` files (plan, notebooks), and runs
    the client's helpers code; some worker offers ``resources``. Else :class:`ClusterError` says what.
    """
    address = client.scheduler.address
    try:
        client.wait_for_workers(1, timeout=WORKERS_TIMEOUT_S)
    except (TimeoutError, asyncio.TimeoutError):
        raise ClusterError(f"no Dask worker joined the scheduler {address} within {WORKERS_TIMEOUT_S} s; "
                           f"start some: dask worker {address}") from None
    workers = client.scheduler_info(n_workers=-1)["workers"]
    if resources:
        offered = {name: info.get("resources") or {} for name, info in workers.items()}
        if not any(all(have.get(key, 0) >= amount for key, amount in resources.items()) for have in offered.values()):
            wanted = ",".join(f"{key}={amount:g}" for key, amount in resources.items())
            raise ClusterError(f"the profile asks each run for the resources {wanted}, and no worker of the Dask "
                               f"cluster at {address} offers them (theirs: {sorted(offered.values(), key=str)}); "
                               f'start workers with: dask worker {address} --resources "{wanted}"')
    token = uuid.uuid4().hex
    probe = folder / f".dask-probe-{token[:12]}"
    probe.write_text(token, encoding="utf-8")
    try:
        try:
            problems = client.run(_probe, str(probe), token, [str(place) for place in needed])
            theirs = client.run(_code_fingerprint)
        except (ImportError, AttributeError) as error:
            raise ClusterError(f"the Dask workers of {address} cannot import this project's helpers ({error}); "
                               "start them in the repository's folder or install it there (pip install -e .)") from None
    finally:
        probe.unlink(missing_ok=True)
    problems = {worker: problem for worker, problem in problems.items() if problem}
    if problems:
        raise ClusterError(f"every Dask worker must see the study's folder {folder} and the repository (a shared "
                           "file system; results are not sent back): "
                           + "; ".join(f"worker {w} {p}" for w, p in problems.items()))
    ours = runner.code_fingerprint()
    other = sorted(worker for worker, fingerprint in theirs.items() if fingerprint != ours)
    if other:
        raise ClusterError(f"Dask workers {', '.join(other)} run other helpers code than this checkout "
                           f"({runner.paths.REPO_ROOT}): restart them from this checkout")
    return sum(int(info.get("nthreads") or 1) for info in workers.values())


class ClusterStop(Stop):
    """On a worker: a :class:`helpers.runner.Stop` set when the client sets the study's
    ``distributed.Event`` (SIGINT or SIGTERM there; the signal's number comes in a ``Variable``),
    or when the scheduler cancels this task (the client went away, killed)."""

    def __init__(self, event: str, signum: str) -> None:
        super().__init__()
        self._remote = distributed.Event(event)
        self._signum_name = signum
        self._worker = distributed.get_worker()
        self._key = self._worker.get_current_task()
        self._orphaned = False

    @property
    def name(self) -> str:
        return CLIENT_GONE if self._orphaned else super().name

    def _cancelled(self) -> bool:
        """Has the scheduler given up this task (its client disconnected)?"""
        task = self._worker.state.tasks.get(self._key)
        if task is None or task.state in ("cancelled", "released", "forgotten"):
            self._orphaned = True
            self._event.set()
        return self._orphaned

    def _take(self) -> None:
        try:
            self.signum = int(distributed.Variable(self._signum_name).get(timeout=5))
        except Exception:  # noqa: BLE001  (the event is what counts)
            self.signum = int(signal.SIGTERM)
        self._event.set()

    def is_set(self) -> bool:
        if not self._event.is_set() and not self._cancelled() and self._remote.is_set():
            self._take()
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        if not self._event.is_set() and not self._cancelled() and self._remote.wait(timeout):
            self._take()
        return self._event.is_set()


def run_on_worker(run: PlannedRun, *, fingerprint: str, event: str, signum: str, topic: str,
                  env: Mapping[str, str], gpu_by_worker_name: bool = False) -> RunOutcome:
    """The Dask task of one run: :func:`helpers.runner.execute` on this worker, its progress lines
    sent to the client as events on ``topic``, stopped by the client's ``event``."""
    worker = distributed.get_worker()
    env = dict(env)
    if gpu_by_worker_name:  # a local cluster's worker n has GPU n
        env["CUDA_VISIBLE_DEVICES"] = str(worker.name)

    def echo(line: str) -> None:
        worker.log_event(topic, {"run": run.name, "line": line})

    try:
        return runner.execute(run, fingerprint=fingerprint, echo=echo, stop=ClusterStop(event, signum), env=env)
    finally:
        worker.log_event(topic, {"run": run.name, "end": True})


class DaskPool:
    """:func:`helpers.runner.run_plan`'s pool on a Dask cluster: ``submit`` a run as a task, ``wait``
    for the first to end, its ``outcome`` (a dead worker's run: failed)."""

    def __init__(self, client: distributed.Client, stop: Stop, *, resources: Mapping[str, float] | None = None,
                 gpu_by_worker_name: bool = False) -> None:
        self.client, self.stop = client, stop
        self.resources = dict(resources) if resources else None
        self.gpu_by_worker_name = gpu_by_worker_name
        self.env = {key: os.environ[key] for key in FORWARDED_ENV if key in os.environ}
        token = uuid.uuid4().hex[:12]
        self._event, self._signum = f"helpers-stop-{token}", f"helpers-signum-{token}"
        self._topic = f"helpers-progress-{token}"
        self._token = token
        self._echoes: dict[str, Callable[[str], None]] = {}
        self._started: dict[str, float] = {}
        self._ended: set[str] = set()
        self._submitted: list[distributed.Future] = []
        self._stop_sent = False
        client.subscribe_topic(self._topic, self._progress)

    def _progress(self, event: tuple[float, dict]) -> None:
        """A progress line (or the end) of a run, from its worker."""
        _, message = event
        if message.get("end"):
            self._ended.add(message["run"])
        elif message["run"] in self._echoes:
            self._echoes[message["run"]](message["line"])

    def submit(self, run: PlannedRun, fingerprint: str, echo: Callable[[str], None]) -> distributed.Future:
        self._echoes[run.name] = echo
        self._started[run.name] = time.monotonic()
        future = self.client.submit(
            run_on_worker, run, fingerprint=fingerprint, event=self._event, signum=self._signum, topic=self._topic,
            env=self.env, gpu_by_worker_name=self.gpu_by_worker_name,
            key=f"{run.name}-{self._token}", pure=False, resources=self.resources, retries=0,
        )
        self._submitted.append(future)
        return future

    def _send_stop(self) -> None:
        """Tell every worker to stop its notebook (once)."""
        if not self._stop_sent:
            self._stop_sent = True
            distributed.Variable(self._signum, client=self.client).set(int(self.stop.signum or signal.SIGTERM))
            distributed.Event(self._event, client=self.client).set()

    def wait(self, futures: list[distributed.Future], timeout: float) -> set[distributed.Future]:
        """The futures of ``futures`` that have ended, waiting up to ``timeout`` s for one."""
        if self.stop.is_set():
            self._send_stop()
        with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
            distributed.wait(futures, timeout=timeout, return_when="FIRST_COMPLETED")
        return {future for future in futures if future.done()}

    def outcome(self, future: distributed.Future, run: PlannedRun, fingerprint: str) -> RunOutcome:
        """The run's outcome; a task that did not return one (its worker died) is recorded failed."""
        try:
            return future.result()
        except KilledWorker as error:
            message = f"{WORKER_DIED} while it ran ({error}); rerun the study to run it again"
        except Exception as error:  # noqa: BLE001  (a broken worker fails its run, the others go on)
            message = f"its Dask task failed: {type(error).__name__}: {error}"
        self._ended.add(run.name)  # no more lines will come from it
        seconds = time.monotonic() - self._started.get(run.name, time.monotonic())
        return runner.record_failure(run, message, seconds, fingerprint)

    def close(self) -> None:
        """Stop what still runs (an error in the client), let late progress lines arrive, unsubscribe."""
        if any(not future.done() for future in self._submitted):
            self._send_stop()
            with contextlib.suppress(Exception):
                distributed.wait(self._submitted, timeout=30)
            self.client.cancel(self._submitted)
        deadline = time.monotonic() + DRAIN_S
        finished = {name for name in self._started}
        while not finished <= self._ended and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(Exception):
            self.client.unsubscribe_topic(self._topic)


@contextlib.contextmanager
def dask_pool(*, scheduler: str | None, cluster: str | None, jobs: int | None, profile_settings: Mapping, stop: Stop,
              say: Callable[[str], None], folder: Path, needed: list[Path]) -> Iterator[tuple[DaskPool, int]]:
    """A :class:`DaskPool` on the scheduler at ``scheduler``, or on a local cluster (``cluster="local"``,
    ``jobs`` workers, default the profile's ``jobs``), checked (:func:`check_workers`); and how many
    runs may be in flight: ``jobs``, default the workers' threads. The client and a local cluster
    are closed at the end, on error too."""
    if cluster not in (None, LOCAL):
        raise ValueError(f"--cluster {cluster!r}: the only cluster started here is 'local'; for another, start its "
                         f"scheduler and workers and pass --scheduler tcp://HOST:PORT")
    resources = profile_settings.get("resources") or None
    with contextlib.ExitStack() as stack:
        gpus = 0
        if cluster == LOCAL:
            gpus = gpu_count()
            local = stack.enter_context(start_local_cluster(int(jobs or profile_settings.get("jobs") or 1), gpus))
            scheduler = local.scheduler_address
            say(f"started a local Dask cluster at {scheduler}: {len(local.workers)} workers"
                + (f", one per GPU ({gpus})" if gpus else ""))
        try:
            client = stack.enter_context(distributed.Client(scheduler, timeout=CONNECT_TIMEOUT_S))
        except (OSError, TimeoutError, asyncio.TimeoutError) as error:
            raise ClusterError(f"cannot reach the Dask scheduler at {scheduler}: {error}") from None
        threads = check_workers(client, folder, needed, resources)
        say(f"Dask scheduler {scheduler}: {len(client.scheduler_info(n_workers=-1)['workers'])} workers, "
            f"{threads} threads" + (f"; each run takes {resources}" if resources else ""))
        pool = DaskPool(client, stop, resources=resources, gpu_by_worker_name=bool(gpus))
        stack.callback(pool.close)
        yield pool, max(1, int(jobs or threads))
