"""Where the Service User's worlds meet the DCC's registry: the demo and the test pack.

The demo world and the conformance pack are written by the Service User's tools
(``scenarios``, ``testpack``); this module loads them into a service's store
through the same loaders as ``hubreturns load``. It is the one module that
imports both sides, as the ``demo`` command and ``testpack run --load`` need.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from hubreturns.dcc.config import load_settings
from hubreturns.dcc.loading import (
    CertificatesRefused,
    load_appointments,
    load_certificates,
    load_devices,
    load_users,
)
from hubreturns.dcc.smki import TrustAnchors, load_trust_anchors
from hubreturns.dcc.store.db import make_engine, make_sessionmaker
from hubreturns.user.scenarios import DemoWorld
from hubreturns.user.testpack import PackError, current_run, renew_pack, sent_run

__all__ = ["load_pack", "load_pack_into_service", "seed"]


def seed(sessions: sessionmaker[Session], world: DemoWorld, now: datetime) -> None:
    """Load the demo files through the same loaders as ``hubreturns load``."""
    load_users(sessions, world.users_csv.read_bytes(), now)
    anchors = load_trust_anchors(world.smki_ca_certs)
    load_certificates(sessions, [world.store_certificates], now, anchors=anchors)
    load_appointments(sessions, world.appointments_csv.read_bytes())
    load_devices(sessions, world.devices_csv.read_bytes(), now)


def load_pack(
    folder: Path,
    sessions: sessionmaker[Session],
    now: datetime,
    anchors: TrustAnchors | None = None,
) -> None:
    """Load a test pack's current run (its ``load/`` folder), as ``testpack run --load`` does.

    ``anchors``: the service's SMKI CAs, when it has them; the pack's
    certificates must chain to one (add ``pack-ca.cert.pem`` to them).
    """
    data = folder / "load"
    try:
        load_users(sessions, (data / "users.csv").read_bytes(), now)
        load_certificates(sessions, [data / "certs"], now, anchors=anchors)
        load_appointments(sessions, (data / "appointments.csv").read_bytes())
        load_devices(sessions, (data / "devices.csv").read_bytes(), now)
    except (OSError, ValueError, CertificatesRefused) as exc:
        raise PackError(
            f"cannot load {data}: " + "; ".join(str(exc).splitlines()),
            "With smki_ca_certs set, add the pack's pack-ca.cert.pem to it; "
            "otherwise write the pack again.",
        ) from None


def load_pack_into_service(pack: Path, config: Path | None) -> str:
    """``testpack run --load``: renew the run if it was sent, load it into the database of
    the service's settings (``config`` or ``HUBRETURNS_CONFIG``); says what it did."""
    settings = load_settings(config)
    anchors = settings.trust_anchors()
    said = ""
    if sent_run(pack) == current_run(pack):
        said = f"run {current_run(pack)} was sent before: renewed as run {renew_pack(pack)}\n"
    engine = make_engine(settings.database_url)
    try:
        load_pack(pack, make_sessionmaker(engine), datetime.now(UTC), anchors)
    finally:
        engine.dispose()
    return f"{said}loaded {pack}/load/ into the service's database"
