"""The processor's certificate cache: how long a certificate removed from the store is
still trusted, and that entries cached together do not all end together."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from hubreturns.processing import CertificateCache
from hubreturns.store.models import Certificate


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

    clock[0] += 0.74 * ttl  # every entry lives at least three quarters of the ttl
    assert all(cache(*key) is not None for key in keys)
    clock[0] += 0.26 * ttl + 0.001  # and none longer than the ttl
    assert [cache(*key) for key in keys] == [None] * len(keys)


def test_entries_cached_together_end_at_different_times(
    seeded: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = CertificateCache(seeded, ttl=60.0)
    with seeded() as session:
        keys = [(c.issuer, int(c.serial)) for c in session.scalars(select(Certificate))]
    assert len(keys) >= 8  # all in one second of 16 by chance: 16**-7
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    for key in keys:
        cache(*key)
    with seeded.begin() as session:
        session.execute(delete(Certificate))
    ended: dict[tuple[str, int], int] = {}
    for second in range(45, 61):
        clock[0] = 1000.0 + second
        for key in keys:
            if key not in ended and cache(*key) is None:
                ended[key] = second
    assert set(ended) == set(keys)
    assert len(set(ended.values())) > 1, "every entry ended in the same second"
