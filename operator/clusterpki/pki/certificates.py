"""X.509 building blocks: the identity a certificate must carry, CA creation, leaf signing, and the
check of an existing certificate against what it should be."""

from __future__ import annotations

import enum
import ipaddress
import threading
from datetime import datetime, timedelta, timezone
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from clusterpki.pki import keys
from clusterpki.pki.keys import PrivateKey
from clusterpki.pki.spec import IPAddress

SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH
# Clock-skew allowance, as kubeadm and the Kubernetes CSR signer backdate certificates.
BACKDATE = timedelta(minutes=5)


class Why(str, enum.Enum):
    """Why a certificate or key is issued: a bounded label for metrics, with the words in :class:`Issue`."""

    NEW = "new"  # there was none
    MISSING = "missing"  # there was one, and it is gone
    DUE = "renewal"  # it entered its renewal window
    FORCED = "on-demand"  # a renewal was asked for
    SPEC = "spec-change"  # it does not match the spec
    ROTATION = "rotation"  # its CA was rotated
    REPAIR = "repair"  # unreadable, mismatched, not signed by its CA, expired, or not what was issued


class Issue(NamedTuple):
    """Why one certificate is (re-)issued: the kind, and the words for Events and logs."""

    why: Why
    message: str


NEW = Issue(Why.NEW, "it did not exist")
DUE = Issue(Why.DUE, "it is due for renewal")
FORCED = Issue(Why.FORCED, "a renewal was asked for")


class Identity(NamedTuple):
    """Everything about a certificate that the spec decides: the subject, its usages and its SANs."""

    common_name: str
    organizations: tuple[str, ...] = ()
    usages: tuple[x509.ObjectIdentifier, ...] = ()
    dns_names: tuple[str, ...] = ()
    ips: tuple[IPAddress, ...] = ()

    def differences(self, wanted: Identity) -> list[str]:
        """How this identity differs from ``wanted``, ignoring order and DNS case; empty if the same."""
        parts = []
        for attribute in ("common_name", "organizations", "usages", "dns_names", "ips"):
            fold = attribute == "dns_names"  # DNS names compare case-insensitively; O and CN do not
            have = _comparable(getattr(self, attribute), fold)
            want = _comparable(getattr(wanted, attribute), fold)
            if have != want:
                parts.append(f"{attribute.replace('_', ' ')} {_show(getattr(self, attribute))} "
                             f"should be {_show(getattr(wanted, attribute))}")
        return parts

    def subject(self) -> x509.Name:
        attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in self.organizations]
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, self.common_name))
        return x509.Name(attributes)


class KeyPair(NamedTuple):
    """A certificate and its key; ``chain``: the certificates presented after it (a cross-signed CA
    during a rotation, see :func:`cross_sign`)."""

    cert: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def certificates(self) -> list[x509.Certificate]:
        """What its ``.crt`` holds: the certificate, then its chain."""
        return [self.cert, *self.chain]


def create_ca(common_name: str, key: PrivateKey, validity: timedelta, now: datetime) -> x509.Certificate:
    """A self-signed CA, as kubeadm makes it: CA:TRUE, keyCertSign, critical, with SKI and AKI."""
    start = _second(now)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - BACKDATE)
        .not_valid_after(start + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True, key_encipherment=False, cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    )
    return builder.sign(key, _hash_for(key))


def cross_sign(ca: x509.Certificate, by: KeyPair, now: datetime) -> x509.Certificate:
    """``ca``'s subject and key, issued by ``by``: what a leaf of ``ca`` presents after itself, so that a
    verifier trusting only ``by`` accepts it too. It never outlives either CA."""
    ski = x509.SubjectKeyIdentifier.from_public_key(ca.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(ca.subject)
        .issuer_name(by.cert.subject)
        .public_key(ca.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_second(now) - BACKDATE)
        .not_valid_after(min(ca.not_valid_after_utc, by.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True, key_encipherment=False, cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(_authority_key_identifier(by.cert), critical=False)
    )
    return builder.sign(by.key, _hash_for(by.key))


def is_cross_of(cert: x509.Certificate, ca: x509.Certificate, by: x509.Certificate, now: datetime) -> bool:
    """Whether ``cert`` is ``ca`` cross-signed by ``by`` (:func:`cross_sign`), and valid now."""
    return cert.subject == ca.subject and keys.same_public_key(cert.public_key(), ca.public_key()) and \
        is_ca(cert) and signed_by(cert, by) and cert.not_valid_before_utc <= now < cert.not_valid_after_utc


def sign_leaf(identity: Identity, public_key: keys.PublicKey, issuer: KeyPair, validity: timedelta,
              now: datetime) -> x509.Certificate:
    """A leaf for ``identity``, signed by ``issuer``; it never outlives the issuer."""
    start = _second(now)
    not_after = min(start + validity, issuer.cert.not_valid_after_utc)
    is_rsa = isinstance(public_key, rsa.RSAPublicKey)
    builder = (
        x509.CertificateBuilder()
        .subject_name(identity.subject())
        .issuer_name(issuer.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True, key_encipherment=is_rsa, cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(identity.usages)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_authority_key_identifier(issuer.cert), critical=False)
    )
    sans = _general_names(identity)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer.key, _hash_for(issuer.key))


def problem_with_leaf(pair: KeyPair, identity: Identity, issuers: list[x509.Certificate],
                      renewal_time: datetime | None, now: datetime) -> Issue | None:
    """Why ``pair`` cannot stay as the certificate for ``identity``, or None when it can.

    ``issuers`` are the CA certificates it may be signed by; ``renewal_time`` is when it falls due,
    if its renewal window is to count as a problem.
    """
    cert = pair.cert
    if not keys.same_public_key(cert.public_key(), pair.key):
        return Issue(Why.REPAIR, "its private key does not match the certificate")
    signers = [ca for ca in issuers if signed_by(cert, ca)]
    if not signers:
        return Issue(Why.REPAIR, "it is not signed by its CA")
    if cert.not_valid_after_utc <= now:
        return Issue(Why.REPAIR, "it has expired")
    capped = any(cert.not_valid_after_utc >= ca.not_valid_after_utc for ca in signers)
    if renewal_time is not None and renewal_time <= now and not capped:  # a capped leaf waits for its CA
        return DUE
    differences = identity_of(cert).differences(identity)
    if differences:
        return Issue(Why.SPEC, f"it does not match the spec: {'; '.join(differences)}")
    return None


def identity_of(cert: x509.Certificate) -> Identity:
    """Read back the Identity a certificate carries, to compare it with what the spec wants."""
    subject = cert.subject
    cns = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    try:
        usages = tuple(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        usages = ()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = tuple(san.get_values_for_type(x509.DNSName))
        ips = tuple(san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns_names, ips = (), ()
    return Identity(
        common_name=str(cns[0].value) if cns else "",
        organizations=tuple(str(a.value) for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)),
        usages=usages,
        dns_names=dns_names,
        ips=ips,
    )


def signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether ``ca`` issued ``cert``: the names chain and ``ca``'s key made the signature. Remembered by
    the two certificates' SHA-256 fingerprints (decisions run in threads, hence the lock): the operator
    checks every leaf of a fleet at each look, and the verification (0.1 ms for ECDSA) was a tenth of a
    fleet's resume."""
    key = (cert.fingerprint(_SHA256), ca.fingerprint(_SHA256))
    found = _VERIFIED.get(key)
    if found is None:
        found = _verify(cert, ca)
        with _VERIFIED_LOCK:
            if len(_VERIFIED) >= _REMEMBERED:
                del _VERIFIED[next(iter(_VERIFIED))]  # the oldest
            _VERIFIED[key] = found
    return found


_SHA256 = hashes.SHA256()
_REMEMBERED = 32768  # the leaves of 2,000 ClusterPKIs, in about 6 MiB
_VERIFIED: dict[tuple[bytes, bytes], bool] = {}
_VERIFIED_LOCK = threading.Lock()


def _verify(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def renewal_time(cert: x509.Certificate, renew_before: timedelta) -> datetime:
    """When a certificate falls due: ``notAfter - renewBefore``."""
    return cert.not_valid_after_utc - renew_before


def _second(moment: datetime) -> datetime:
    """X.509 times have whole seconds."""
    return moment.astimezone(timezone.utc).replace(microsecond=0)


def _key_usage(digital_signature: bool, key_encipherment: bool, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature, content_commitment=False, key_encipherment=key_encipherment,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign,
        encipher_only=False, decipher_only=False,
    )


def _authority_key_identifier(ca: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:  # a brought-in CA without SKI: derive it from its key
        ski = x509.SubjectKeyIdentifier.from_public_key(ca.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _hash_for(key: PrivateKey) -> hashes.HashAlgorithm:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def _general_names(identity: Identity) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in identity.dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in identity.ips]
    return names


def _comparable(value: object, fold_case: bool) -> object:
    if isinstance(value, tuple):
        return frozenset(v.lower() if fold_case else v for v in value)
    return value


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(getattr(v, "_name", str(v)) for v in value) + "]"
    return repr(value)

