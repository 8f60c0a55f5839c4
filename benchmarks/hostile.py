"""Section 6: hostile shapes, the CPU a refused hostile request costs against a valid one.

Each hostile body is a validly signed request reshaped within the 64 KiB body
cap (thousands of namespace declarations, attributes, elements, entity
references, a relative namespace URI on SignedInfo, a long issuer name and
whitespace inside SignedInfo, which pass the shape checks and reach the
signature check). Each goes through the
``Processor`` one at a time (``handle_duis``: parse, checks, the audit row's
commit, the signed answer), as does a stream of valid accepted requests in the
same run; the figure is CPU time a request and its ratio to the valid one.
The bound stated in docs/security.md ("Bounded CPU per request") is a ratio of
at most 5.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import Section, sqlite_url
from benchmarks.inprocess import measure
from benchmarks.world import build_world, mixed_bodies, populate, reset
from hubreturns.dcc.config import Settings
from hubreturns.dcc.service import build_service
from hubreturns.model import Endpoint
from hubreturns.wire.envelope import SR_NS

__all__ = ["hostile_shapes", "shapes"]

_CAP = 64 * 1024 - 64


def _fill(valid: bytes, at: bytes, unit: Callable[[int], bytes]) -> bytes:
    """``valid`` with as many ``unit(i)`` inserted after ``at`` as fit under the cap."""
    parts: list[bytes] = []
    size = len(valid)
    i = 0
    while size + len(unit(i)) < _CAP:
        parts.append(unit(i))
        size += len(parts[-1])
        i += 1
    return valid.replace(at, at + b"".join(parts), 1)


def shapes(valid: bytes) -> dict[str, bytes]:
    """The hostile bodies, each within the body cap, built from one signed request."""
    sr = SR_NS.encode()
    return {
        "namespace declarations, relative URIs": _fill(
            valid, b"<sr:Request", lambda i: b' xmlns:p%d="u"' % i
        ),
        "namespace declarations, the DUIS URI": _fill(
            valid, b"<sr:Request", lambda i: b' xmlns:p%d="%s"' % (i, sr)
        ),
        "attributes": _fill(valid, b"<sr:Header", lambda i: b' a%d="1"' % i),
        "elements": _fill(valid, b"<sr:Body>", lambda _i: b"<a/>"),
        "entity references in text": _fill(valid, b"<sr:UserRefID>", lambda _i: b"&amp;"),
        "character references in text": _fill(valid, b"<sr:UserRefID>", lambda _i: b"&#x10FFFF;"),
        "long attribute values within limits": _fill(
            valid, b"<sr:Header", lambda i: b' a%d="%s"' % (i, b"x" * 1000)
        ),
        "relative namespace on SignedInfo": valid.replace(
            b"<ds:SignedInfo", b'<ds:SignedInfo xmlns:x="u"', 1
        ),
        # Schema-valid shapes that pass the shape checks and so reach the signature check:
        # the issuer name is normalised before the store lookup, and whitespace inside
        # SignedInfo is canonicalised twice (the document, then SignedInfo) before ECDSA.
        "long X509IssuerName (unknown issuer)": _fill(
            valid, b"<ds:X509IssuerName>CN=", lambda _i: b"Z" * 64
        ),
        "whitespace inside SignedInfo": _fill(valid, b"<ds:SignedInfo>", lambda _i: b" " * 64),
    }


def _cpu_per_request(url: str, body: bytes, seconds: float) -> tuple[float, str]:
    """CPU µs a request for ``body`` sent again and again, and the code it got."""
    reset(url)
    processor = build_service(Settings(database_url=url, allow_test_keys=True))
    try:
        code = processor.handle_duis(body, Endpoint.NON_DEVICE).code  # warm
        done = 0
        cpu = time.process_time()
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            for _ in range(16):
                processor.handle_duis(body, Endpoint.NON_DEVICE)
            done += 16
        cpu = time.process_time() - cpu
    finally:
        processor.close()
        processor.engine.dispose()
    return 1e6 * cpu / done, code


def hostile_shapes(folder: Path, *, seconds: float, requests: int) -> Section:
    """CPU a request: each hostile shape against valid accepted requests, same run."""
    section = Section("6. hostile shapes: CPU a refused hostile request against a valid one")
    world = build_world(50)
    hubs = requests + 10
    bodies = list(mixed_bodies(world, requests, hubs=hubs, accepted_only=True))
    url = sqlite_url(folder, "hostile.db")
    populate(url, world, hubs)
    valid = measure(url, bodies, seconds)
    baseline = valid.cpu_micros
    section.add(
        "valid request (accepted, SQLite, one at a time)",
        baseline,
        "µs CPU/request",
        note=f"{valid.requests} requests, wrong answers: {valid.wrong or 'none'}",
    )
    worst = 0.0
    for name, body in shapes(bodies[0].data).items():
        micros, code = _cpu_per_request(url, body, seconds / 2)
        ratio = micros / baseline
        worst = max(worst, ratio)
        section.add(
            f"hostile: {name}",
            micros,
            "µs CPU/request",
            baseline="hostile / valid",
            ratio=ratio,
            note=f"{len(body):,} bytes, answered {code}",
        )
    section.add(
        "worst hostile / valid CPU ratio",
        worst,
        "×",
        note="bound: at most 5 (docs/security.md)",
    )
    section.data = {"valid_cpu_micros": baseline, "worst_ratio": worst}
    return section
