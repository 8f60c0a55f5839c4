"""The certificate cache behind the request path's snapshots: how long a certificate
removed from the store is still trusted, and the background confirmation that keeps a
certificate in use from expiring in the request path."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

import pytest
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from hubreturns.dcc import certificates
from hubreturns.dcc.certificates import CertificateCache
from hubreturns.dcc.store.models import Certificate
from hubreturns.wire.certificate import SigningCertificate

TTL = 60.0


class _Clock:
    """``time`` for the cache alone (the event loop keeps the real one)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


@dataclass
class _Cached:
    cache: CertificateCache
    clock: _Clock
    keys: list[tuple[str, int]]


@pytest.fixture
def cached(seeded: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> _Cached:
    """A cache holding every demo certificate, read at time 1000; its clock is ours."""
    clock = _Clock(1000.0)
    monkeypatch.setattr(certificates, "time", clock)
    engine = seeded.kw["bind"]
    cache = CertificateCache(engine, ttl=TTL)
    with seeded() as session:
        keys = [(c.issuer, int(c.serial)) for c in session.scalars(select(Certificate))]
    assert len(keys) >= 4
    assert set(cache.read(keys)) == set(keys)
    return _Cached(cache, clock, keys)


def _remove_all(seeded: sessionmaker[Session]) -> None:
    with seeded.begin() as session:
        session.execute(delete(Certificate))


def test_a_removed_certificate_is_trusted_for_at_most_the_ttl(
    cached: _Cached, seeded: sessionmaker[Session]
) -> None:
    _remove_all(seeded)
    cached.clock.now += 0.74 * TTL  # trusted while the ttl lasts (no loop: nothing confirms it)
    assert set(cached.cache.read(cached.keys)) == set(cached.keys)
    cached.clock.now += 0.26 * TTL + 0.001  # and not a moment longer
    assert cached.cache.read(cached.keys) == {}


async def _settled(cache: CertificateCache, key: tuple[str, int]) -> SigningCertificate | None:
    """The snapshot's certificate once the background confirmation it started has finished
    (polled); None once a confirmation has dropped the entry."""
    for _ in range(500):
        await asyncio.sleep(0)  # lets the confirmation's completion run on the loop
        found = cache.snapshot(key)
        if not cache._confirming:
            return found[key] if found is not None else None
        threading.Event().wait(0.01)
    raise AssertionError("the background confirmation did not finish")


def test_a_certificate_in_use_is_confirmed_in_the_background_before_it_expires(
    cached: _Cached,
) -> None:
    key = cached.keys[0]

    async def main() -> None:
        cached.clock.now = 1000.0 + 0.8 * TTL  # due for confirmation: answered at once
        cached.cache.check_revocations()  # (as a busy worker's background read does)
        assert cached.cache.snapshot(key) is not None
        await _settled(cached.cache, key)
        cached.clock.now = 1000.0 + 1.5 * TTL  # past the first read's ttl, within the next
        cached.cache.check_revocations()
        assert cached.cache.snapshot(key) is not None

    asyncio.run(main())


def test_a_certificate_removed_while_in_use_is_dropped_when_next_confirmed(
    cached: _Cached, seeded: sessionmaker[Session]
) -> None:
    _remove_all(seeded)

    async def main() -> None:
        cached.clock.now = 1000.0 + 0.8 * TTL
        cached.cache.check_revocations()  # removed behind its back: the number did not move
        assert cached.cache.snapshot(cached.keys[0]) is not None  # read 48 s ago: trusted
        assert await _settled(cached.cache, cached.keys[0]) is None  # confirmed gone
        assert cached.cache.snapshot(cached.keys[1]) is not None  # others: until their own

    asyncio.run(main())
