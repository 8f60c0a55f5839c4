"""Bytes to a checked DUIS document, and a verified document to a typed request.

``parse`` refuses anything but one plain, well-formed UTF-8 XML document: no
DTD, entities, processing instructions or comments (a comment inside a text
node lets ``.text`` read less than was signed), no network, no huge-tree
mode, and a size cap enforced before the parser sees a byte. Its shape is
bounded too (``SecurityPolicy``: allowed namespaces, at most so many
declarations, elements and attributes): byte counts before parsing bound
what libxml2 builds, and one walk after it checks the namespace
declarations, so a hostile document is refused before canonicalisation,
whose cost grows with declarations times elements. ``validate``
checks it against the DUIS 5.4 schema loaded once per thread from package
data. ``read_request`` is only ever called on a document whose signature has
been verified; the signature covers the whole document, so what it reads is
what was signed.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from importlib import resources
from typing import Any

from lxml import etree

from hubreturns.codes import Reason
from hubreturns.errors import EnvelopeRejection
from hubreturns.model import (
    RequestId,
    ReturnKind,
    ReturnRequest,
    clip,
)
from hubreturns.policy import SecurityPolicy

__all__ = [
    "DS_NS",
    "SR_NS",
    "HeaderEcho",
    "check_version",
    "parse",
    "peek_header",
    "read_request",
    "schema",
    "validate",
]

SR_NS = "http://www.dccinterface.co.uk/ServiceUserGateway"
DS_NS = "http://www.w3.org/2000/09/xmldsig#"
_SR = f"{{{SR_NS}}}"
_REQUEST = f"{_SR}Request"
_SCHEMA_FILE = "DUIS_Schema_V5.4.xsd"

_local = threading.local()
_QUOTED = re.compile(r"'([^']*)'")


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
    return EnvelopeRejection(Reason.MALFORMED, message)


def parse(data: bytes, policy: SecurityPolicy) -> etree._Element:
    """Parse request bytes under the hardened profile, or raise MALFORMED."""
    if not data:
        raise _refuse("the request body is empty")
    if len(data) > policy.max_body_bytes:
        raise _refuse(f"the body has {len(data)} bytes, over the {policy.max_body_bytes} limit")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _refuse(f"the body is not valid UTF-8 (byte {exc.start})") from None
    _check_markup(data, policy)
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise _refuse(f"not well-formed XML: {_libxml_message(exc.msg)}") from None
    except (etree.LxmlError, ValueError) as exc:  # any other parser failure is the body's
        raise _refuse(f"the body could not be parsed ({type(exc).__name__})") from None
    tree = root.getroottree()
    info: Any = tree.docinfo
    if info.doctype or info.internalDTD is not None or info.externalDTD is not None:
        raise _refuse("a DOCTYPE is not allowed")
    if (info.encoding or "UTF-8").upper() not in ("UTF-8", "UTF8"):
        raise _refuse(f"declared encoding {clip(info.encoding)} is not UTF-8")
    for sibling in (*root.itersiblings(preceding=True), *root.itersiblings()):
        raise _refuse(f"a {_node_kind(sibling)} outside the root element is not allowed")
    # Filtered in C: only comments, PIs and entity references (every node whose
    # tag is not a string) come back to Python, so a clean document costs nothing.
    for node in root.iter(etree.Comment, etree.ProcessingInstruction, etree.Entity):
        raise _refuse(f"a {_node_kind(node)} inside the document is not allowed")
    _check_shape(data, root, policy)
    return root


def _check_markup(data: bytes, policy: SecurityPolicy) -> None:
    """Refuse, before parsing, a body with more markup than the shape limits allow.

    Every element needs a ``<`` (two with its end tag) and every attribute or
    namespace declaration an ``=``; counting them in C costs microseconds and
    bounds what libxml2 would build (tens of thousands of nodes in 64 KiB cost
    it milliseconds). Text may hold ``=`` (base64, names) and CDATA ``<``,
    hence the slack; ``_check_shape`` applies the exact limits after parsing.
    """
    tags = data.count(b"<")
    if tags > 2 * policy.max_elements + 2:
        raise _refuse(
            f"the body has {tags} '<' characters, more markup than "
            f"{policy.max_elements} elements can have"
        )
    equals = data.count(b"=")
    if equals > 2 * (policy.max_attributes + policy.max_namespace_declarations) + 16:
        raise _refuse(
            f"the body has {equals} '=' characters, more than {policy.max_attributes} "
            f"attributes and {policy.max_namespace_declarations} namespace declarations can have"
        )


def _check_shape(data: bytes, root: etree._Element, policy: SecurityPolicy) -> None:
    """The exact limits: namespace declarations (allow-listed URIs), elements, attributes.

    Elements and attributes are counted only when the byte counts cannot
    already bound them (a DUIS request's ``<`` and ``=`` are well below the
    limits), so the usual cost is one walk for the namespace declarations.
    """
    walk = etree.iterwalk(root, events=("start-ns",))
    for declarations, (_event, (prefix, uri)) in enumerate(walk, start=1):
        if declarations > policy.max_namespace_declarations:
            raise _refuse(f"more than {policy.max_namespace_declarations} namespace declarations")
        if uri not in policy.allowed_namespaces:
            name = f"xmlns:{prefix}" if prefix else "xmlns"
            raise _refuse(f"namespace {name}={clip(uri)!r} is not one a DUIS document uses")
    if data.count(b"<") > policy.max_elements:
        elements = int(root.xpath("count(//*)"))  # type: ignore[arg-type]
        if elements > policy.max_elements:
            raise _refuse(f"{elements} elements, over the {policy.max_elements} limit")
    if data.count(b"=") > policy.max_attributes:
        attributes = int(root.xpath("count(//@*)"))  # type: ignore[arg-type]
        if attributes > policy.max_attributes:
            raise _refuse(f"{attributes} attributes, over the {policy.max_attributes} limit")


def _node_kind(node: etree._Element) -> str:
    if isinstance(node, etree._Comment):
        return "comment"
    if isinstance(node, etree._ProcessingInstruction):
        return "processing instruction"
    if isinstance(node, etree._Entity):
        return "entity reference"
    return "node"


def validate(root: etree._Element) -> None:
    """Check the document is an ``sr:Request`` valid against DUIS 5.4, or raise SCHEMA."""
    if root.tag != _REQUEST:
        raise EnvelopeRejection(
            Reason.SCHEMA, f"the root element is {clip(str(root.tag))}, not sr:Request"
        )
    xsd = schema()
    try:
        valid = xsd.validate(root)
    except etree.LxmlError as exc:  # libxml2 could not check it: the document's failure
        raise EnvelopeRejection(
            Reason.SCHEMA, f"the schema check failed ({type(exc).__name__})"
        ) from None
    if not valid:
        error: Any = xsd.error_log.last_error  # type: ignore[attr-defined]
        where = f"line {error.line}: " if error is not None else ""
        message = error.message if error is not None else "schema validation failed"
        raise EnvelopeRejection(Reason.SCHEMA, f"{where}{_libxml_message(message)}")


def _libxml_message(message: str) -> str:
    """A libxml2 message made fit for a reason (logs, audit rows).

    libxml2 quotes the offending text whole (the value of a 60 kB DeviceID,
    say), so each quoted value is clipped. A name it does not quote (a tag)
    is bounded with the whole reason, where the refusal is recorded.
    """
    return _QUOTED.sub(lambda m: f"'{clip(m.group(1))}'", message.replace(_SR, "sr:"))


def check_version(root: etree._Element, policy: SecurityPolicy) -> None:
    """Refuse a ``schemaVersion`` the policy does not accept (SCHEMA_VERSION).

    The schema types it as any decimal, so 9.9 is schema-valid; a request written
    for another DUIS version must not be read as if it were 5.4.
    """
    version = root.get("schemaVersion")
    if version not in policy.schema_versions:
        accepted = ", ".join(sorted(policy.schema_versions))
        raise EnvelopeRejection(
            Reason.SCHEMA_VERSION,
            f"schemaVersion {version!r} is not accepted; this service accepts {accepted}",
        )


@dataclass(frozen=True, slots=True)
class HeaderEcho:
    """Header values read *without* trusting them, only to address an error response."""

    request_id: RequestId | None
    service_reference: str
    service_reference_variant: str


_HEADER = f"{_SR}Header"
_BODY = f"{_SR}Body"
_REQUEST_ID = f"{_SR}RequestID"
_COMMAND_VARIANT = f"{_SR}CommandVariant"
_SERVICE_REFERENCE = f"{_SR}ServiceReference"
_SERVICE_REFERENCE_VARIANT = f"{_SR}ServiceReferenceVariant"
_REQUEST_ID_PATH = f"{_HEADER}/{_REQUEST_ID}"
_VARIANT_PATH = f"{_HEADER}/{_SERVICE_REFERENCE_VARIANT}"
_DEVICE_ID = f"{_SR}DeviceID"
_OTHER_DEVICE_ID = f"{_SR}OtherDeviceID"
_CONNECTION_METHOD = f"{_SR}CHFConnectionMethod"
_FAULT_REASON = f"{_SR}CHFFaultReason"
_USER_REF_DATETIME = f"{_SR}UserRefDateTime"
_USER_REF_ID = f"{_SR}UserRefID"
_INCIDENT_REFERENCE = f"{_SR}IncidentReference"
_ADDITIONAL_INFORMATION = f"{_SR}AdditionalInformation"
_KINDS = {kind.variant: kind for kind in ReturnKind}
_BODY_TAGS = {kind: f"{_SR}{kind.body_element}" for kind in ReturnKind}
_RETURN_TYPE_TAGS = {
    ReturnKind.FAULT: f"{_SR}CHFFaultReturnType",
    ReturnKind.NO_FAULT: f"{_SR}CHFNoFaultReturnType",
}
#: Each body element's tag and the ``ReturnRequest.from_fields`` field it fills.
_FIELD_TAGS = {
    kind: (
        (_DEVICE_ID, "device_id"),
        (_RETURN_TYPE_TAGS[kind], "return_type"),
        (_OTHER_DEVICE_ID, "other_device_id"),
        (_CONNECTION_METHOD, "connection_method"),
        (_FAULT_REASON, "fault_reason"),
        (_USER_REF_DATETIME, "user_ref_datetime"),
        (_USER_REF_ID, "user_ref_id"),
        (_INCIDENT_REFERENCE, "incident_reference"),
        (_ADDITIONAL_INFORMATION, "additional_information"),
    )
    for kind in ReturnKind
}


def peek_header(root: etree._Element | None) -> HeaderEcho:
    """Best-effort header for answering a refused request; never used to decide."""
    request_id: RequestId | None = None
    sr, srv = "8.14", "8.14.3"
    if root is not None and root.tag == _REQUEST:
        text = root.findtext(_REQUEST_ID_PATH)
        try:
            request_id = RequestId.parse(text) if text else None
        except ValueError:
            request_id = None
        variant = root.findtext(_VARIANT_PATH)
        if variant in ("8.14.3", "8.14.4"):
            srv = variant
    return HeaderEcho(request_id, sr, srv)


def _texts(parent: etree._Element) -> dict[object, str]:
    """Each child's tag mapped to its text ("" when empty), as ``find`` would pick.

    One pass over the children instead of one ``find`` per field; walking them
    backwards lets the first child with a tag win, which is what ``find`` returns.
    """
    return {child.tag: child.text or "" for child in reversed(parent)}


def read_request(root: etree._Element) -> ReturnRequest:
    """Typed 8.14.3 / 8.14.4 content of a schema-valid, signature-verified request."""
    top = {child.tag: child for child in reversed(root)}
    header = top.get(_HEADER)
    body = top.get(_BODY)
    if header is None or body is None or len(body) != 1:
        raise EnvelopeRejection(Reason.SCHEMA, "sr:Header and one sr:Body child are required")
    header_fields = _texts(header)
    variant = header_fields.get(_SERVICE_REFERENCE_VARIANT) or ""
    reference = header_fields.get(_SERVICE_REFERENCE) or ""
    kind = _KINDS.get(variant)
    if kind is None:
        raise EnvelopeRejection(
            Reason.SCHEMA,
            f"service request variant {clip(variant)} is not served here (only 8.14.3 and 8.14.4)",
        )
    content = body[0]
    if reference != "8.14" or content.tag != _BODY_TAGS[kind]:
        raise EnvelopeRejection(
            Reason.SCHEMA,
            f"ServiceReference {clip(reference)} / variant {clip(variant)} does not match body "
            f"{clip(etree.QName(content).localname)}",
        )
    values = _texts(content)
    fields = {name: values.get(tag) for tag, name in _FIELD_TAGS[kind]}
    try:
        request_id = RequestId.parse(header_fields.get(_REQUEST_ID) or "")
        command_variant = int(header_fields.get(_COMMAND_VARIANT) or "")
    except ValueError as exc:
        # The model's messages clip the values they quote.
        raise EnvelopeRejection(Reason.SCHEMA, str(exc)) from None
    read = ReturnRequest.from_fields(
        {"variant": variant, **fields},
        request_id=request_id,
        command_variant=command_variant,
        service_reference=reference,
    )
    if isinstance(read, list):
        raise EnvelopeRejection(Reason.SCHEMA, "; ".join(str(p) for p in read))
    return read
