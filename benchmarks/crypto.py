"""Sections 1 and 2: the raw P-256 ceiling, and XML-signature verification ours vs others.

The ceiling is what one core can do with ``cryptography`` alone: one ECDSA
verify (the request) plus one ECDSA sign (the response) per request. The
verification comparison runs the same signed 8.14.3 request through
hubreturns.wire, signxml (pinned to the DUIS profile) and python-xmlsec;
then the machine's idle penalty: the CPU of our check back to back against
each call after a pause.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from benchmarks.common import Section, cpu_per_call, throughput
from benchmarks.world import build_world, mixed_bodies
from hubreturns.policy import REQUEST_POLICY
from hubreturns.wire import envelope, signature

__all__ = ["ceiling", "verification"]


def ceiling(seconds: float) -> Section:
    """ECDSA P-256 sign and verify per second on one core; their combined request rate."""
    section = Section("1. raw crypto ceiling (cryptography, one core)")
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    message = b"<ds:SignedInfo>" + b"x" * 600 + b"</ds:SignedInfo>"
    algorithm = ec.ECDSA(hashes.SHA256())
    signed = key.sign(message, algorithm)
    sign_rate = throughput(lambda _i: key.sign(message, algorithm), seconds)
    verify_rate = throughput(lambda _i: public.verify(signed, message, algorithm), seconds)
    per_request = 1 / (1 / sign_rate + 1 / verify_rate)
    section.add("ECDSA P-256 sign", sign_rate, "ops/s")
    section.add("ECDSA P-256 verify", verify_rate, "ops/s")
    section.add(
        "ceiling: 1 verify + 1 sign", per_request, "req/s/core", note="the physical limit per core"
    )
    section.data = {"sign": sign_rate, "verify": verify_rate, "ceiling_per_core": per_request}
    return section


def verification(seconds: float) -> Section:
    """Verify one signed 8.14.3 request: hubreturns vs signxml vs python-xmlsec."""
    section = Section("2. signature verification of a signed 8.14.3 request")
    world = build_world(1, keys=1)
    user = world.users[0]
    body = next(iter(mixed_bodies(world, 1, hubs=10))).data
    certs = {user.certificate.key: user.certificate}
    now = datetime.now(UTC)
    cert_pem = user.certificate.pem

    def ours_verify(_i: int) -> None:
        root = envelope.parse(body, REQUEST_POLICY)
        signature.verify(root, lambda i, s: certs.get((i, s)), REQUEST_POLICY, now)

    def ours_full(_i: int) -> None:
        root = envelope.parse(body, REQUEST_POLICY)
        envelope.validate(root)
        signature.verify(root, lambda i, s: certs.get((i, s)), REQUEST_POLICY, now)

    ours_verify(0)
    ours = throughput(ours_verify, seconds)
    full = throughput(ours_full, seconds)
    section.add("hubreturns: parse + verify", ours, "verifies/s")
    section.add("hubreturns: parse + XSD + verify", full, "verifies/s")
    section.data["ours"] = ours
    section.data["ours_with_xsd"] = full
    _idle_penalty(section, ours_full, count=int(100 * seconds))

    signxml_rate = _signxml(body, cert_pem, seconds)
    if isinstance(signxml_rate, str):
        section.add("signxml", float("nan"), "verifies/s", note=signxml_rate)
    else:
        section.add(
            "signxml 5 (DUIS profile)",
            signxml_rate,
            "verifies/s",
            baseline="hubreturns / signxml",
            ratio=ours / signxml_rate,
        )
        section.data["signxml"] = signxml_rate

    xmlsec_rate = _python_xmlsec(body, cert_pem, seconds)
    if isinstance(xmlsec_rate, str):
        section.add("python-xmlsec", float("nan"), "verifies/s", note=xmlsec_rate)
        cli = _xmlsec_cli(body, cert_pem, max(1.0, seconds / 2))
        if isinstance(cli, float):
            section.add(
                "xmlsec1 CLI (one process per call)",
                cli,
                "verifies/s",
                baseline="hubreturns / xmlsec1 CLI",
                ratio=ours / cli,
            )
    else:
        section.add(
            "python-xmlsec (libxmlsec1)",
            xmlsec_rate,
            "verifies/s",
            baseline="hubreturns / python-xmlsec",
            ratio=ours / xmlsec_rate,
        )
        section.data["xmlsec"] = xmlsec_rate
    return section


def _idle_penalty(section: Section, check: Callable[[int], None], *, count: int) -> None:
    """The machine's idle penalty: one request's check after a pause against back to back.

    At 250 requests/s a worker idles about 4 ms before each request, so this
    is the figure that says why a request costs more CPU there (section 4)
    than at saturation, on a machine where it is well above 1.
    """
    back_to_back = cpu_per_call(check, idle=0, count=count)
    section.add("parse + XSD + verify, back to back", back_to_back * 1e6, "µs CPU")
    section.data["check_cpu"] = {"0": back_to_back}
    for idle in (0.001, 0.004):
        after = cpu_per_call(check, idle=idle, count=count)
        section.add(
            f"the same, each after {idle * 1000:.0f} ms idle",
            after * 1e6,
            "µs CPU",
            baseline="back to back",
            ratio=after / back_to_back,
            note="the machine's idle penalty",
        )
        section.data["check_cpu"][str(idle)] = after


def _signxml(body: bytes, cert_pem: bytes, seconds: float) -> float | str:
    try:
        from signxml import SignatureMethod, XMLVerifier
        from signxml.algorithms import DigestAlgorithm
        from signxml.verifier import SignatureConfiguration
    except ImportError as exc:
        return f"not installed ({exc}); pip install -e '.[bench]'"
    config = SignatureConfiguration(
        require_x509=True,
        expect_references=1,
        signature_methods=frozenset({SignatureMethod.ECDSA_SHA256}),
        digest_algorithms=frozenset({DigestAlgorithm.SHA256}),
    )
    # signxml has no setting to pin the canonicalisation; it applies what SignedInfo names.
    cert = cert_pem.decode()

    def run(_i: int) -> None:
        XMLVerifier().verify(body, x509_cert=cert, expect_config=config)

    try:
        run(0)
    except Exception as exc:
        return f"signxml refused the request: {exc}"
    return throughput(run, seconds, batch=10)


def _python_xmlsec(body: bytes, cert_pem: bytes, seconds: float) -> float | str:
    try:
        import xmlsec
        from lxml import etree
    except ImportError as exc:
        return f"python-xmlsec not installed ({exc}); pip install -e '.[bench]'"
    key = xmlsec.Key.from_memory(cert_pem, xmlsec.KeyFormat.CERT_PEM, None)
    parser = etree.XMLParser(resolve_entities=False, no_network=True)

    def run(_i: int) -> None:
        root = etree.fromstring(body, parser)
        node = xmlsec.tree.find_node(root, xmlsec.constants.NodeSignature)
        ctx = xmlsec.SignatureContext()
        ctx.key = key
        ctx.verify(node)

    try:
        run(0)
    except Exception as exc:
        return f"python-xmlsec refused the request: {exc}"
    return throughput(run, seconds)


def _xmlsec_cli(body: bytes, cert_pem: bytes, seconds: float) -> float | str:
    tool = shutil.which("xmlsec1")
    if tool is None:
        return "xmlsec1 not installed"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "req.xml").write_bytes(body)
        (folder / "cert.pem").write_bytes(cert_pem)
        command = [
            tool,
            "--verify",
            "--pubkey-cert-pem",
            str(folder / "cert.pem"),
            str(folder / "req.xml"),
        ]

        def run(_i: int) -> None:
            subprocess.run(command, check=True, capture_output=True)

        return throughput(run, seconds, batch=5)
