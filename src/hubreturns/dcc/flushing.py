"""When a group commit goes: a pure policy, observations in, a hold out.

A transaction costs about the same for one job as for ten (its commit writes
the touched pages and flushes them), so at a moderate load a batch may wait a
few milliseconds for company. ``FlushPolicy`` decides how long, from what it
is told: when jobs come (``job``), which requests the HTTP edge has received
that will bring one (``arrived``), how many clients it serves (``Load``), and
what holding gathered before (``ended``). It reads no clock and no socket, so
it is tested on its own.
"""

from __future__ import annotations

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
    """A request received by the edge that will bring a job (``FlushPolicy.arrived``).

    It counts as arriving until its job is submitted (``FlushPolicy.job`` closes
    it) or the edge closes it because none will come (the client left, say). The
    count is live, not a snapshot taken with each job, because the writer thread
    reads it while it decides whether to wait. Closing twice does nothing.
    """

    __slots__ = ("_policy",)

    def __init__(self, policy: FlushPolicy) -> None:
        self._policy: FlushPolicy | None = policy

    def close(self) -> None:
        policy, self._policy = self._policy, None
        if policy is not None:
            policy._left()


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
        self._arriving = 0
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
        """A request was received that will bring a job: it counts as arriving until closed."""
        self._arriving += 1
        return Arrival(self)

    def _left(self) -> None:
        self._arriving -= 1

    def arriving(self) -> bool:
        """Whether requests are on their way (a writer thread holds its batch open for them)."""
        return self._arriving > 0

    def all_in(self, queued: int) -> bool:
        """Whether no job can join a batch of ``queued`` but those already in it."""
        load = self.load
        return load is not None and not self._arriving and queued >= load.clients

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
