"""The processor's certificate cache: how long a certificate removed from the store is
still trusted, and the background read that keeps a certificate in use from expiring
in the request path."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from hubreturns import processing
from hubreturns.processing import CertificateCache, NotCached
from hubreturns.store.models import Certificate
from hubreturns.wire.certificate import SigningCertificate


def test_a_removed_certificate_is_trusted_for_at_most_the_ttl(
    seeded: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    ttl = 60.0
    cache = CertificateCache(seeded, ttl=ttl)
    with seeded() as session:
        keys = [(c.issuer, int(c.serial)) for c in session.scalars(select(Certificate))]
    assert len(keys) >= 4
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    assert all(cache(*key) is not None for key in keys)
    with seeded.begin() as session:
        session.execute(delete(Certificate))

    clock[0] += 0.74 * ttl  # trusted while the ttl lasts (no loop: nothing confirms it)
    assert all(cache(*key) is not None for key in keys)
    clock[0] += 0.26 * ttl + 0.001  # and none longer than the ttl
    assert [cache(*key) for key in keys] == [None] * len(keys)


class _Clock:
    """``time`` for the cache alone (the event loop keeps the real one)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


async def _settled(cache: CertificateCache, key: tuple[str, int]) -> SigningCertificate:
    """``cached`` once the background confirmation it started has finished (polled)."""
    for _ in range(500):
        await asyncio.sleep(0)  # lets the read's completion run on the loop
        try:
            found = cache.cached(*key)
        except NotCached:
            raise
        if found is not None and not cache._confirming:
            return found
        threading.Event().wait(0.01)
    raise AssertionError("the background read did not finish")


def test_a_certificate_in_use_is_confirmed_in_the_background_before_it_expires(
    seeded: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    ttl = 60.0
    clock = _Clock(1000.0)
    monkeypatch.setattr(processing, "time", clock)
    cache = CertificateCache(seeded, ttl=ttl)
    with seeded() as session:
        first = session.scalars(select(Certificate)).first()
        assert first is not None
        key = (first.issuer, int(first.serial))
    assert cache(*key) is not None  # read at 1000

    async def main() -> None:
        clock.now = 1000.0 + 0.8 * ttl  # due for a read, not expired: answered at once
        assert cache.cached(*key) is not None
        await _settled(cache, key)
        clock.now = 1000.0 + 1.5 * ttl  # past the first read's ttl, within the second's
        assert cache.cached(*key) is not None

    asyncio.run(main())


def test_a_certificate_removed_while_in_use_is_dropped_when_next_confirmed(
    seeded: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    ttl = 60.0
    clock = _Clock(1000.0)
    monkeypatch.setattr(processing, "time", clock)
    cache = CertificateCache(seeded, ttl=ttl)
    with seeded() as session:
        keys = [(c.issuer, int(c.serial)) for c in session.scalars(select(Certificate))]
    for key in keys:
        cache(*key)
    with seeded.begin() as session:
        session.execute(delete(Certificate))

    async def main() -> None:
        clock.now = 1000.0 + 0.8 * ttl
        assert cache.cached(*keys[0]) is not None  # still trusted: read 48 s ago
        with pytest.raises(NotCached):
            await _settled(cache, keys[0])  # the confirmation found it gone
        assert cache.cached(*keys[1]) is not None  # others: until their own reads

    asyncio.run(main())
