"""Signing certificates for the request path: snapshots from a per-process cache.

``wire.check`` takes a snapshot, never the store: before a request is
checked, ``CertificateCache.snapshot`` answers from the cache at once, or
says the store must be read (``read``, in a thread for an event loop), and the
check then runs over what was read. A request is parsed once either way.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from hubreturns.dcc.store.db import reading
from hubreturns.dcc.store.repository import Ledger
from hubreturns.wire.certificate import SigningCertificate

__all__ = [
    "REVOCATION_REFRESH",
    "REVOCATION_WINDOW",
    "CertificateCache",
    "Key",
    "Snapshot",
    "lookup",
]

log = logging.getLogger("hubreturns.dcc.certificates")

#: A certificate's (normalised issuer, serial), as KeyInfo names it.
Key = tuple[str, int]
#: What the check is given: the certificates it may need, as read before it began.
Snapshot = Mapping[Key, SigningCertificate]

#: A cache entry: (monotonic time it expires, time it is due to be confirmed, certificate).
_Entry = tuple[float, float, SigningCertificate]

#: Revocations: a busy worker re-reads the store's certificate change number this
#: often, in the background; and trusts its cache for at most this long after the
#: last read began. A certificate revoked or removed at t is refused by every
#: worker, on every host, by t + REVOCATION_WINDOW (seconds).
REVOCATION_REFRESH = 0.4
REVOCATION_WINDOW = 0.9


def lookup(snapshot: Snapshot) -> Callable[[str, int], SigningCertificate | None]:
    """The ``wire.signature.CertificateLookup`` over ``snapshot``."""
    return lambda issuer, serial: snapshot.get((issuer, serial))


class CertificateCache:
    """Certificates by (issuer, serial), read through to the store.

    Only found certificates are cached, so a certificate loaded later is seen
    at once. An entry is trusted for ``ttl`` seconds after the store last
    confirmed it (``SecurityPolicy.trust_ttl``), so a certificate removed from
    the store stops being trusted within ``ttl``.

    Certificates in use are confirmed before then, in the background and in
    bulk: a snapshot that finds its entry past a random 50–75 % of ``ttl``
    notes it and is answered from the entry; one read in a thread then checks
    every noted entry in one query. Without this, every busy sender's entry
    expired in the request path once a minute, each worker re-reading its
    whole cache within seconds (p99 at 1,000 req/s from 30 to 105 ms).

    Revocations and removals must take effect within a second, so the whole
    cache is trusted only for ``REVOCATION_WINDOW`` after the last read of the
    store's change number (``check_revocations``): a busy worker re-reads it
    in the background every ``REVOCATION_REFRESH``; a snapshot that finds it
    older than the window is refused, and the request reads the store
    (``read``), which reads the number first. When the number has moved, every
    entry is dropped (revocations are rare; re-reading is cheap).
    """

    def __init__(
        self, engine: Engine, *, ttl: float = 60.0, on_read: Callable[[], None] | None = None
    ) -> None:
        self._engine = engine
        self._ttl = ttl
        #: Called once for each store read on a request's behalf (metrics).
        self._on_read = on_read
        self._entries: dict[Key, _Entry] = {}
        self._lock = threading.Lock()
        #: Entries due to be confirmed, and whether a confirmation is running
        #: (both touched on the event loop only).
        self._due: set[Key] = set()
        self._confirming = False
        #: The change number last read, when that read began (monotonic), whether a
        #: background read is running, and a count of drops (so that a read begun
        #: before a drop does not put back what the drop took out).
        self._generation: int | None = None
        self._checked_at = -float("inf")
        self._checking = False
        self._check_lock = threading.Lock()
        self._epoch = 0

    def snapshot(self, key: Key | None) -> Snapshot | None:
        """The fresh cached certificate for ``key``, or None when the store must be read.

        A document whose KeyInfo cannot be read (``key`` None) needs nothing:
        its check refuses it before any lookup. On an event loop this also
        starts the background reads described above, without waiting for them.
        """
        now = time.monotonic()
        if now >= self._checked_at + REVOCATION_REFRESH:
            if now >= self._checked_at + REVOCATION_WINDOW:
                return None  # revocations unchecked: ``read`` checks them first
            self._check_soon()
        if key is None:
            return {}
        entry = self._entries.get(key)
        if entry is None or entry[0] <= now:
            return None
        if entry[1] <= now:
            self._due.add(key)
            self._confirm_due()
        return {key: entry[2]}

    def read(self, keys: Iterable[Key | None]) -> Snapshot:
        """Blocking: the certificates for ``keys``, from the cache or in one store read.

        Raises ``SQLAlchemyError`` when the store cannot be read.
        """
        if time.monotonic() >= self._checked_at + REVOCATION_WINDOW:
            self.check_revocations()
        found: dict[Key, SigningCertificate] = {}
        missing: list[Key] = []
        now = time.monotonic()
        for key in {k for k in keys if k is not None}:
            entry = self._entries.get(key)
            if entry is not None and entry[0] > now and now < self._checked_at + REVOCATION_WINDOW:
                found[key] = entry[2]
            else:
                missing.append(key)
        if not missing:
            return found
        epoch = self._epoch
        with reading(self._engine) as connection, connection.begin():
            ledger = Ledger(connection)
            read = {key: ledger.certificate(*key) for key in missing}
        confirmed_at = time.monotonic()
        with self._lock:
            for key, cert in read.items():
                if self._on_read is not None:
                    self._on_read()
                if cert is None:
                    continue
                found[key] = cert
                if self._epoch == epoch:
                    self._entries[key] = self._entry(cert, confirmed_at)
        return found

    def check_revocations(self) -> None:
        """Read the store's change number; drop every entry if it moved since the last read.

        A failed read is logged and leaves the cache untrusted (lookups then
        read through to the store), never trusted longer.
        """
        with self._check_lock:
            started = time.monotonic()
            try:
                with reading(self._engine) as connection, connection.begin():
                    generation = Ledger(connection).certificate_generation()
            except SQLAlchemyError as exc:
                log.warning("reading the certificate change number failed: %s", exc)
                return
            with self._lock:
                if generation != self._generation:
                    self._entries.clear()
                    self._epoch += 1
                    self._generation = generation
                self._checked_at = started

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    # -- background reads, started from the event loop ---------------------------------

    def _check_soon(self) -> None:
        """``check_revocations`` in a thread, unless one is running or there is no loop."""
        if self._checking:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._checking = True
        done = loop.run_in_executor(None, self.check_revocations)
        done.add_done_callback(self._checked)

    def _checked(self, _: object) -> None:
        self._checking = False

    def _entry(self, cert: SigningCertificate, confirmed_at: float) -> _Entry:
        due = confirmed_at + self._ttl * (0.5 + 0.25 * random.random())  # noqa: S311 (spread)
        return (confirmed_at + self._ttl, due, cert)

    def _confirm_due(self) -> None:
        if self._confirming or not self._due:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop: the entries simply expire when their time is up
            return
        keys, self._due = self._due, set()
        self._confirming = True
        done = loop.run_in_executor(None, self._confirm, keys)
        done.add_done_callback(self._confirmed)

    def _confirmed(self, _: object) -> None:
        self._confirming = False
        self._confirm_due()  # whatever was noted meanwhile

    def _confirm(self, keys: set[Key]) -> None:
        """In a thread: extend the entries the store still holds, forget the others."""
        confirmed_at = time.monotonic()  # before the read: trust runs from what it saw
        try:
            with reading(self._engine) as connection, connection.begin():
                present = Ledger(connection).certificates_present(keys)
        except SQLAlchemyError as exc:  # the entries stay until they expire
            log.warning("confirming %d cached certificates failed: %s", len(keys), exc)
            return
        with self._lock:
            for key in keys:
                entry = self._entries.get(key)
                if entry is None:
                    continue
                if key in present:
                    self._entries[key] = self._entry(entry[2], confirmed_at)
                else:
                    del self._entries[key]
