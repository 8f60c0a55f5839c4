"""Bytes to a checked DUIS document, and a verified document to a typed request.

``parse`` refuses anything but one plain, well-formed UTF-8 XML document: no
DTD, entities, processing instructions or comments (a comment inside a text
node lets ``.text`` read less than was signed), no network, no huge-tree
mode, and a size cap enforced before the parser sees a byte. ``validate``
checks it against the DUIS 5.4 schema loaded once per thread from package
data. ``read_request`` is only ever called on a document whose signature has
been verified; the signature covers the whole document, so what it reads is
what was signed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from importlib import resources
from typing import Any

from lxml import etree

from hubreturns.codes import ResponseCode
from hubreturns.errors import EnvelopeRejection
from hubreturns.model import (
    ConnectionMethod,
    FaultReason,
    RequestId,
    ReturnKind,
    ReturnRequest,
    eui,
)
from hubreturns.policy import SecurityPolicy

__all__ = [
    "DS_NS",
    "SR_NS",
    "HeaderEcho",
    "parse",
    "peek_header",
    "read_request",
    "schema",
    "validate",
]

SR_NS = "http://www.dccinterface.co.uk/ServiceUserGateway"
DS_NS = "http://www.w3.org/2000/09/xmldsig#"
_SR = f"{{{SR_NS}}}"
_SCHEMA_FILE = "DUIS_Schema_V5.4.xsd"

_local = threading.local()


def _parser() -> etree.XMLParser:
    # lxml parser objects must not be shared between threads.
    parser: etree.XMLParser | None = getattr(_local, "parser", None)
    if parser is None:
        parser = etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            dtd_validation=False,
            huge_tree=False,
            remove_comments=False,
            remove_pis=False,
            remove_blank_text=False,
            # collect_ids=False makes libxml2 2.14 load the external DTD subset
            # (XML_SKIP_IDS sets ctxt->loadsubset): a local file read. Keep True.
            collect_ids=True,
            attribute_defaults=False,
        )
        _local.parser = parser
    return parser


def schema() -> etree.XMLSchema:
    """The DUIS 5.4 schema, loaded once per thread from package data."""
    loaded: etree.XMLSchema | None = getattr(_local, "schema", None)
    if loaded is None:
        folder = resources.files("hubreturns.wire") / "schemas"
        with resources.as_file(folder / _SCHEMA_FILE) as path:
            # Our own package data: its DTD only declares entities for the
            # xmldsig schema; network access stays off.
            schema_parser = etree.XMLParser(no_network=True, resolve_entities=True)
            loaded = etree.XMLSchema(etree.parse(str(path), schema_parser))
        _local.schema = loaded
    return loaded


def _refuse(message: str) -> EnvelopeRejection:
    return EnvelopeRejection(ResponseCode.E30, message)


def parse(data: bytes, policy: SecurityPolicy) -> etree._Element:
    """Parse request bytes under the hardened profile, or raise E30."""
    if not data:
        raise _refuse("the request body is empty")
    if len(data) > policy.max_body_bytes:
        raise _refuse(f"the body has {len(data)} bytes, over the {policy.max_body_bytes} limit")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _refuse(f"the body is not valid UTF-8 (byte {exc.start})") from None
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise _refuse(f"not well-formed XML: {exc.msg}") from None
    tree = root.getroottree()
    info: Any = tree.docinfo
    if info.doctype or info.internalDTD is not None or info.externalDTD is not None:
        raise _refuse("a DOCTYPE is not allowed")
    if (info.encoding or "UTF-8").upper() not in ("UTF-8", "UTF8"):
        raise _refuse(f"declared encoding {info.encoding} is not UTF-8")
    for sibling in (*root.itersiblings(preceding=True), *root.itersiblings()):
        raise _refuse(f"a {_node_kind(sibling)} outside the root element is not allowed")
    for node in root.iter():
        if not isinstance(node.tag, str):
            raise _refuse(f"a {_node_kind(node)} inside the document is not allowed")
    return root


def _node_kind(node: etree._Element) -> str:
    if isinstance(node, etree._Comment):
        return "comment"
    if isinstance(node, etree._ProcessingInstruction):
        return "processing instruction"
    if isinstance(node, etree._Entity):
        return "entity reference"
    return "node"


def validate(root: etree._Element) -> None:
    """Check the document is an ``sr:Request`` valid against DUIS 5.4, or raise E31."""
    if root.tag != f"{_SR}Request":
        raise EnvelopeRejection(ResponseCode.E31, f"the root element is {root.tag}, not sr:Request")
    xsd = schema()
    if not xsd.validate(root):
        error: Any = xsd.error_log.last_error  # type: ignore[attr-defined]
        where = f"line {error.line}: " if error is not None else ""
        message = error.message if error is not None else "schema validation failed"
        raise EnvelopeRejection(ResponseCode.E31, f"{where}{message}")


@dataclass(frozen=True, slots=True)
class HeaderEcho:
    """Header values read *without* trusting them, only to address an error response."""

    request_id: RequestId | None
    service_reference: str
    service_reference_variant: str


def peek_header(root: etree._Element | None) -> HeaderEcho:
    """Best-effort header for answering a refused request; never used to decide."""
    request_id: RequestId | None = None
    sr, srv = "8.14", "8.14.3"
    if root is not None and root.tag == f"{_SR}Request":
        text = root.findtext(f"{_SR}Header/{_SR}RequestID")
        try:
            request_id = RequestId.parse(text) if text else None
        except ValueError:
            request_id = None
        variant = root.findtext(f"{_SR}Header/{_SR}ServiceReferenceVariant")
        if variant in ("8.14.3", "8.14.4"):
            srv = variant
    return HeaderEcho(request_id, sr, srv)


def _text(parent: etree._Element, name: str) -> str | None:
    child = parent.find(f"{_SR}{name}")
    if child is None:
        return None
    return child.text or ""


def read_request(root: etree._Element) -> ReturnRequest:
    """Typed 8.14.3 / 8.14.4 content of a schema-valid, signature-verified request."""
    header = root.find(f"{_SR}Header")
    body = root.find(f"{_SR}Body")
    if header is None or body is None or len(body) != 1:
        raise EnvelopeRejection(ResponseCode.E31, "sr:Header and one sr:Body child are required")
    variant = _text(header, "ServiceReferenceVariant") or ""
    reference = _text(header, "ServiceReference") or ""
    try:
        kind = ReturnKind.from_variant(variant)
    except ValueError:
        raise EnvelopeRejection(
            ResponseCode.E31,
            f"service request variant {variant} is not served here (only 8.14.3 and 8.14.4)",
        ) from None
    content = body[0]
    if reference != "8.14" or content.tag != f"{_SR}{kind.body_element}":
        raise EnvelopeRejection(
            ResponseCode.E31,
            f"ServiceReference {reference} / variant {variant} does not match body "
            f"{etree.QName(content).localname}",
        )
    try:
        request_id = RequestId.parse(_text(header, "RequestID") or "")
        command_variant = int(_text(header, "CommandVariant") or "")
        connection = _text(content, "CHFConnectionMethod")
        reason = _text(content, "CHFFaultReason")
        other = _text(content, "OtherDeviceID")
        type_element = "CHFFaultReturnType" if kind is ReturnKind.FAULT else "CHFNoFaultReturnType"
        return ReturnRequest(
            request_id=request_id,
            command_variant=command_variant,
            service_reference=reference,
            kind=kind,
            device_id=eui(_text(content, "DeviceID") or ""),
            return_type=_text(content, type_element) or "",
            user_ref_datetime=_text(content, "UserRefDateTime"),
            user_ref_id=_text(content, "UserRefID"),
            incident_reference=_text(content, "IncidentReference"),
            additional_information=_text(content, "AdditionalInformation"),
            other_device_id=eui(other) if other is not None else None,
            connection_method=ConnectionMethod(connection) if connection is not None else None,
            fault_reason=FaultReason(reason) if reason is not None else None,
        )
    except ValueError as exc:
        raise EnvelopeRejection(ResponseCode.E31, str(exc)) from None
