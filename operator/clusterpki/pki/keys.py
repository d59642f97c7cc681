"""Private keys: generation (RSA in parallel, since it is the slow part), PEM encoding and matching."""

from __future__ import annotations

import os

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from clusterpki.pki.spec import KeyAlgorithm

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
PRIVATE_KEY_TYPES = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)

_RSA_BITS = {KeyAlgorithm.RSA_2048: 2048, KeyAlgorithm.RSA_3072: 3072, KeyAlgorithm.RSA_4096: 4096}
_CURVES = {KeyAlgorithm.ECDSA_P256: ec.SECP256R1, KeyAlgorithm.ECDSA_P384: ec.SECP384R1}


def generate(algorithm: KeyAlgorithm) -> PrivateKey:
    if algorithm.is_rsa:
        return rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS[algorithm])
    return ec.generate_private_key(_CURVES[algorithm]())


def generate_many(algorithm: KeyAlgorithm, count: int) -> list[PrivateKey]:
    """Make ``count`` keys. RSA keys are made on all cores: OpenSSL releases the GIL while it searches
    for primes, so threads scale. ECDSA keys take microseconds and are made inline."""
    if count <= 1 or not algorithm.is_rsa:
        return [generate(algorithm) for _ in range(count)]
    from concurrent.futures import (
        ThreadPoolExecutor,  # only RSA needs it: keep ECDSA start-up lean
    )

    workers = min(count, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="keygen") as pool:
        return list(pool.map(lambda _: generate(algorithm), range(count)))


def algorithm_of(key: PrivateKey | PublicKey) -> KeyAlgorithm | None:
    """The spec's name for a key's algorithm, or None for a kind the spec cannot ask for."""
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return next((alg for alg, bits in _RSA_BITS.items() if bits == key.key_size), None)
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return next((alg for alg, curve in _CURVES.items() if isinstance(key.curve, curve)), None)
    return None


def private_pem(key: PrivateKey) -> bytes:
    """PEM in the traditional form kubeadm writes (``RSA PRIVATE KEY`` / ``EC PRIVATE KEY``)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def public_pem(key: PrivateKey | PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, PRIVATE_KEY_TYPES) else key
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_pem(data: bytes) -> PrivateKey:
    """Load an unencrypted PEM private key. Raises ValueError without echoing the key material."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ValueError("not an unencrypted PEM private key") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise ValueError("not an RSA or ECDSA private key")
    return key


def same_public_key(a: PrivateKey | PublicKey, b: PrivateKey | PublicKey) -> bool:
    return public_pem(a) == public_pem(b)


def load_public_pems(data: bytes) -> list[PublicKey]:
    """Every PEM public key in ``data`` (``sa.pub`` holds several during a rotation); ValueError, without
    echoing the data, when a block is not an RSA or ECDSA public key."""
    found = []
    for block in data.split(b"-----END PUBLIC KEY-----")[:-1]:
        try:
            key = serialization.load_pem_public_key(block + b"-----END PUBLIC KEY-----\n")
        except (ValueError, TypeError):
            raise ValueError("not a list of PEM public keys") from None
        if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
            raise ValueError("not an RSA or ECDSA public key")
        found.append(key)
    if not found:
        raise ValueError("holds no PEM public key")
    return found
