"""Build and sign 8.14.3 / 8.14.4 requests (the Service User's side of the wire).

Used by the client CLI, the demo, the conformance pack and the tests, so every
producer writes the same compact, schema-valid document.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ec
from lxml import etree

from hubreturns.model import ReturnKind, ReturnRequest
from hubreturns.wire.certificate import SigningCertificate
from hubreturns.wire.envelope import DS_NS, SR_NS
from hubreturns.wire.signature import sign

__all__ = ["build_request", "sign_request"]

_SR = f"{{{SR_NS}}}"


def build_request(request: ReturnRequest) -> etree._Element:
    """The unsigned ``sr:Request`` document for ``request``, elements in XSD order."""
    root = etree.Element(f"{_SR}Request", nsmap={"sr": SR_NS, "ds": DS_NS}, schemaVersion="5.4")
    header = etree.SubElement(root, f"{_SR}Header")
    etree.SubElement(header, f"{_SR}RequestID").text = str(request.request_id)
    etree.SubElement(header, f"{_SR}CommandVariant").text = str(request.command_variant)
    etree.SubElement(header, f"{_SR}ServiceReference").text = request.service_reference
    etree.SubElement(header, f"{_SR}ServiceReferenceVariant").text = request.kind.variant
    body = etree.SubElement(
        etree.SubElement(root, f"{_SR}Body"), f"{_SR}{request.kind.body_element}"
    )

    def add(name: str, value: str | None) -> None:
        if value is not None:
            etree.SubElement(body, f"{_SR}{name}").text = value

    add("DeviceID", request.device_id)
    if request.kind is ReturnKind.FAULT:
        add("CHFFaultReturnType", request.return_type)
        add("UserRefDateTime", request.user_ref_datetime)
        add("UserRefID", request.user_ref_id)
        add("OtherDeviceID", request.other_device_id)
        add("IncidentReference", request.incident_reference)
        add("CHFConnectionMethod", request.connection_method and request.connection_method.value)
        add("CHFFaultReason", request.fault_reason and request.fault_reason.value)
    else:
        add("CHFNoFaultReturnType", request.return_type)
        add("UserRefDateTime", request.user_ref_datetime)
        add("UserRefID", request.user_ref_id)
        add("IncidentReference", request.incident_reference)
    add("AdditionalInformation", request.additional_information)
    return root


def sign_request(
    request: ReturnRequest, key: ec.EllipticCurvePrivateKey, certificate: SigningCertificate
) -> bytes:
    """The compact, signed request document."""
    return sign(build_request(request), key, certificate)
