"""An independent TPM 2.0 quote verifier written with pyca/cryptography (tests only).

It shares no code with nomyo's verifier (``rust/nomyo-core/src/tpm``): it parses the three
structures from the byte layouts of the TCG specification (see the fixtures' README),
rebuilds the AIK as a ``cryptography`` public key and checks the signature, the nonce
(``extraData == SHA-256(payload_id)[:16]``) and the PCR digest. RSA keys (RSASSA and
RSA-PSS) and ECC P-256 keys (ECDSA) are covered.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

__all__ = ["oracle_verify"]

_BANKS = {0x0004: "sha1", 0x000B: "sha256", 0x000C: "sha384", 0x000D: "sha512"}


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise ValueError("short structure")
        out = self.data[self.at : self.at + n]
        self.at += n
        return out

    def u8(self) -> int:
        return int(self.take(1)[0])

    def u16(self) -> int:
        return int(struct.unpack(">H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def sized(self) -> bytes:
        return self.take(self.u16())


def _attest(data: bytes) -> dict[str, Any]:
    r = _Reader(data)
    if r.take(4) != b"\xff\x54\x43\x47" or r.u16() != 0x8018:
        raise ValueError("not a TPM-generated quote")
    r.sized()  # qualifiedSigner
    extra = r.sized()
    r.take(17 + 8)  # clockInfo, firmwareVersion
    selection = []
    for _ in range(r.u32()):
        alg, size = r.u16(), r.u8()
        bitmap = r.take(size)
        pcrs = [8 * i + b for i in range(size) for b in range(8) if bitmap[i] >> b & 1]
        selection.append((_BANKS[alg], pcrs))
    digest = r.sized()
    if r.at != len(data):
        raise ValueError("trailing bytes")
    return {"extra": extra, "selection": selection, "digest": digest}


def _public_key(data: bytes) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    r = _Reader(_Reader(data).sized())
    kind, _name_alg, _attrs = r.u16(), r.u16(), r.u32()
    r.sized()  # authPolicy
    if r.u16() != 0x0010:  # symmetric: a signing key has none
        raise ValueError("unexpected symmetric definition")
    if r.u16() != 0x0010:  # scheme: fixed to one (sign), else NULL
        r.u16()
    if kind == 0x0001:
        r.u16()  # keyBits
        exponent = r.u32() or 65537
        modulus = int.from_bytes(r.sized(), "big")
        return rsa.RSAPublicNumbers(exponent, modulus).public_key()
    if kind == 0x0023:
        if r.u16() != 0x0003:
            raise ValueError("not P-256")
        if r.u16() != 0x0010:
            r.u16()
        x, y = int.from_bytes(r.sized(), "big"), int.from_bytes(r.sized(), "big")
        return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    raise ValueError("unknown key type")


def _check_signature(key: Any, signature: bytes, message: bytes) -> None:
    r = _Reader(signature)
    scheme, hash_alg = r.u16(), r.u16()
    if hash_alg != 0x000B:
        raise ValueError("not SHA-256")
    if scheme == 0x0014:
        key.verify(r.sized(), message, padding.PKCS1v15(), hashes.SHA256())
    elif scheme == 0x0016:
        sig = r.sized()
        try:
            key.verify(
                sig, message, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256()
            )
        except InvalidSignature:
            pss = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.MAX_LENGTH)
            key.verify(sig, message, pss, hashes.SHA256())
    elif scheme == 0x0018:
        rr, ss = int.from_bytes(r.sized(), "big"), int.from_bytes(r.sized(), "big")
        key.verify(encode_dss_signature(rr, ss), message, ec.ECDSA(hashes.SHA256()))
    else:
        raise ValueError("unknown signature scheme")


def oracle_verify(block: dict[str, Any], payload_id: str) -> bool:
    """True when the quote in ``block`` is signed by its AIK, bound to ``payload_id`` and its
    PCR values hash to its digest; False for anything else."""
    try:
        quote = base64.b64decode(block["quote_b64"], validate=True)
        attest = _attest(quote)
        key = _public_key(base64.b64decode(block["aik_pubkey_b64"], validate=True))
        _check_signature(key, base64.b64decode(block["signature_b64"], validate=True), quote)
        if attest["extra"] != hashlib.sha256(payload_id.encode("utf-8")).digest()[:16]:
            return False
        claimed = [
            (bank, [int(i) for i in pcrs.split(",")])
            for bank, _, pcrs in (part.partition(":") for part in block["pcr_banks"].split("+"))
        ]
        if claimed != attest["selection"]:
            return False
        values = block["pcr_values"]
        concat = b"".join(
            bytes.fromhex(values[bank][str(i)]) for bank, pcrs in attest["selection"] for i in pcrs
        )
        count = sum(len(pcrs) for _, pcrs in attest["selection"])
        if count != sum(len(v) for v in values.values()):
            return False
        return hashlib.sha256(concat).digest() == attest["digest"]
    except (InvalidSignature, ValueError, KeyError, TypeError):
        return False
