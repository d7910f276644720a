"""Sensitive request fields (a payee's bank account and name), encrypted for WeChat Pay.

WeChat Pay wants them RSA-encrypted under *its* key (the WeChat Pay public key, or the
newest platform certificate) with OAEP padding, SHA-1 as both the OAEP and the MGF1 hash
and no label, base64 in the JSON body, and that key's id or serial in the request's
``Wechatpay-Serial`` header. The official SDKs do exactly this (wechatpay-go
``EncryptOAEPWithPublicKey``: ``rsa.EncryptOAEP(sha1.New(), …, nil)``; wechatpay-java
``RSAPrivacyEncryptor``: ``RSA/ECB/OAEPWithSHA-1AndMGF1Padding``). SHA-1 is WeChat Pay's
choice, not ours; OAEP with SHA-1 is still sound for encryption.

Decryption is the other side's, here for WeChat Pay's role in the sandbox and for answers
WeChat Pay encrypts under the merchant key.
"""

from __future__ import annotations

import base64
import binascii

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from paylane_common.wechatpay.exceptions import DecryptionError, WechatPayError

_SHA1_DIGEST_SIZE = 20


def _oaep() -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)


def max_plaintext_bytes(public_key: RSAPublicKey) -> int:
    """What one OAEP-SHA1 block holds: 214 bytes under a 2048-bit key."""
    return public_key.key_size // 8 - 2 * _SHA1_DIGEST_SIZE - 2


def encrypt_field(public_key: RSAPublicKey, plaintext: str) -> str:
    """``plaintext`` (UTF-8) encrypted for WeChat Pay, base64 as the JSON field carries it.

    Each call gives a different ciphertext (OAEP is randomised)."""
    data = plaintext.encode("utf-8")
    if len(data) > max_plaintext_bytes(public_key):
        raise WechatPayError(
            f"a sensitive field is {len(data)} bytes; one RSA-OAEP block holds at most"
            f" {max_plaintext_bytes(public_key)}"
        )
    return base64.b64encode(public_key.encrypt(data, _oaep())).decode("ascii")


def decrypt_field(private_key: RSAPrivateKey, ciphertext_b64: str) -> str:
    """The plaintext of :func:`encrypt_field`'s output (DecryptionError otherwise; the
    message never carries the plaintext)."""
    try:
        ciphertext = base64.b64decode(ciphertext_b64, validate=True)
        return private_key.decrypt(ciphertext, _oaep()).decode("utf-8")
    except (binascii.Error, ValueError, TypeError):
        # cryptography raises ValueError for a wrong key, padding or length alike.
        raise DecryptionError("sensitive field does not decrypt (RSA-OAEP, SHA-1)") from None
