"""When a group commit goes: a pure policy, observations in, a hold out.

A transaction costs about the same for one job as for ten (its commit writes
the touched pages and flushes them), so at a moderate load a batch may wait a
few milliseconds for company. ``FlushPolicy`` decides how long, from what it
is told: when jobs come (``job``), which requests the HTTP edge has read that
will bring one (``arrived``, and ``mark`` for those already in flight when a
batch is taken), how many clients it serves (``Load``), and what holding
gathered before (``ended``). It reads no clock and no socket, so
it is tested on its own.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

__all__ = ["DEFAULT_HOLD", "Arrival", "FlushPolicy", "Load"]

#: How long a batch may wait for more jobs by default (seconds; ``Settings.commit_hold_ms``).
DEFAULT_HOLD = 0.003
#: Weight of the newest value in the moving averages of the hold's decision.
_AVERAGE_WEIGHT = 0.1
#: The longest time between jobs the average takes in (after a quiet spell, the load
#: that returns is recognised within a few dozen jobs).
_GAP_CAP = 0.1
#: Holding pays when a held batch gathers at least this many more jobs, on average.
_HOLD_PAYS = 0.5
#: While holding does not pay, one batch in this many is held anyway, to notice when it
#: would; after each probe that gathered nothing, one in twice as many, up to the most.
_PROBE_EVERY = 16
_PROBE_EVERY_MOST = 512


class Arrival:
    """A request whose body the edge has read and that will bring a job (``FlushPolicy.arrived``).

    It counts as arriving until its job is submitted (``FlushPolicy.job`` closes
    it) or the edge closes it because none will come (an error, say). The count
    is live, not a snapshot taken with each job, because the writer thread
    reads it while it decides whether to wait. Closing twice does nothing.
    """

    __slots__ = ("_policy", "_round")

    def __init__(self, policy: FlushPolicy, round_: int) -> None:
        self._policy: FlushPolicy | None = policy
        self._round = round_

    def close(self) -> None:
        policy, self._policy = self._policy, None
        if policy is not None:
            policy._left(self._round)


@dataclass(frozen=True, slots=True)
class Load:
    """What the HTTP edge knows, when a job is submitted, about requests that may join it.

    ``clients``: connections open to this worker (with HTTP/1.1 each carries one
    request at a time, so a client whose request waits for the commit cannot
    send another). ``arrival``: the job's own request, counted in by
    ``FlushPolicy.arrived`` and out when the job is submitted.
    """

    clients: int
    arrival: Arrival | None = None


class FlushPolicy:
    """How long the batch just begun waits for more jobs, from what has been observed.

    It waits ``hold`` when jobs have been coming less than ``hold`` apart and
    waiting has paid: the batches held lately gathered more jobs. A client that
    sends one request at a time is never helped by a wait (nothing can come
    until it is answered): after a wait that gathered nothing, batches go at
    once, but for an occasional probe (one in ``_PROBE_EVERY``, fewer while
    probes gather nothing: a sequential client waits once in 512 requests).
    A batch is not held, and a held one ends, once every connected client has
    a job in it and nothing is arriving (``all_in``): a closed loop would
    otherwise wait the whole hold for nothing. Without a ``Load`` (no HTTP
    edge), only the hold's own time ends it.
    """

    def __init__(self, hold: float = DEFAULT_HOLD) -> None:
        self.hold = hold
        self._gap = _GAP_CAP
        self._last_job: float | None = None
        self._gain = _HOLD_PAYS
        self._since_probe = 0
        self._probe_every = _PROBE_EVERY
        self.load: Load | None = None
        #: Open arrivals by the writer's round they came in (``mark``); the event
        #: loop adds and removes them while the writer thread reads, hence the lock.
        self._open: dict[int, int] = {}
        self._round = 0
        self._lock = threading.Lock()
        #: Batches held, and those whose hold ended early because every client was in.
        self.holds = 0
        self.holds_ended_early = 0

    def job(self, now: float, load: Load | None) -> None:
        """A job was submitted at ``now`` (seconds, any monotonic clock) under ``load``."""
        if self._last_job is not None:
            self._gap += _AVERAGE_WEIGHT * (min(now - self._last_job, _GAP_CAP) - self._gap)
        self._last_job = now
        if load is not None:
            self.load = load
            if load.arrival is not None:
                load.arrival.close()

    def arrived(self) -> Arrival:
        """A request's body was read and a job will come: it counts as arriving until closed."""
        with self._lock:
            round_ = self._round
            self._open[round_] = self._open.get(round_, 0) + 1
        return Arrival(self, round_)

    def _left(self, round_: int) -> None:
        with self._lock:
            left = self._open[round_] - 1
            if left:
                self._open[round_] = left
            else:
                del self._open[round_]

    def mark(self) -> int:
        """A batch is being taken: requests arriving from now on are for the next one.

        Returns the mark to pass to ``arriving``. Why: waiting also for requests
        that arrive during the wait made a steady stream hold every batch for
        the writer's whole gather wait, which went into every request's latency.
        """
        with self._lock:
            self._round += 1
            return self._round

    def arriving(self, before: int | None = None) -> bool:
        """Whether requests are on their way (that arrived before the mark ``before``, if given)."""
        with self._lock:
            if before is None:
                return bool(self._open)
            return any(round_ < before for round_ in self._open)

    def all_in(self, queued: int) -> bool:
        """Whether no job can join a batch of ``queued`` but those already in it."""
        load = self.load
        return load is not None and queued >= load.clients and not self.arriving()

    def hold_for(self, queued: int) -> float:
        """Seconds the batch just begun (``queued`` jobs) waits for more; 0 to go at once."""
        if self.all_in(queued) or self.hold <= 0 or self._gap >= self.hold:
            return 0.0
        if self._gain >= _HOLD_PAYS:
            return self._held()
        self._since_probe += 1
        if self._since_probe < self._probe_every:
            return 0.0
        self._since_probe = 0
        return self._held()

    def _held(self) -> float:
        self.holds += 1
        return self.hold

    def ends_early(self, queued: int) -> bool:
        """Whether a held batch of ``queued`` jobs goes now, before its hold is up."""
        if not self.all_in(queued):
            return False
        self.holds_ended_early += 1
        return True

    def ended(self, size: int) -> None:
        """A held batch went with ``size`` jobs: what holding gathered, for the next decision."""
        self._gain += _AVERAGE_WEIGHT * (size - 1 - self._gain)
        if size > 1:
            self._probe_every = _PROBE_EVERY
        else:
            self._probe_every = min(2 * self._probe_every, _PROBE_EVERY_MOST)
