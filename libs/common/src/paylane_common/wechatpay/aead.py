"""AEAD_AES_256_GCM, the encryption of notification resources and downloaded certificates."""

from __future__ import annotations

import base64
import binascii
import secrets
import string

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from paylane_common.wechatpay.exceptions import DecryptionError

ALGORITHM = "AEAD_AES_256_GCM"
KEY_SIZE = 32
TAG_SIZE = 16
NONCE_LENGTH = 12
_NONCE_ALPHABET = string.ascii_letters + string.digits


def _key_bytes(apiv3_key: bytes | str) -> bytes:
    # The APIv3 key is a 32-character string used as its raw bytes, not hex or base64.
    return apiv3_key.encode("utf-8") if isinstance(apiv3_key, str) else apiv3_key


def _aad(associated_data: str | None) -> bytes | None:
    return associated_data.encode("utf-8") if associated_data else None


def decrypt_resource(
    apiv3_key: bytes | str,
    nonce: str,
    associated_data: str | None,
    ciphertext_b64: str,
) -> bytes:
    """Decrypt a resource; the base64 ciphertext carries the 16-byte GCM tag at its end."""
    key = _key_bytes(apiv3_key)
    if len(key) != KEY_SIZE:
        raise DecryptionError(f"APIv3 key must be {KEY_SIZE} bytes")
    if not nonce:
        raise DecryptionError("empty nonce")
    try:
        data = base64.b64decode(ciphertext_b64, validate=True)
    except (binascii.Error, ValueError):
        raise DecryptionError("ciphertext is not valid base64") from None
    if len(data) < TAG_SIZE:
        raise DecryptionError("ciphertext shorter than the GCM tag")
    try:
        return AESGCM(key).decrypt(nonce.encode("utf-8"), data, _aad(associated_data))
    except InvalidTag:
        raise DecryptionError(
            "authentication tag mismatch (wrong APIv3 key, nonce or associated data)"
        ) from None
    except ValueError:
        raise DecryptionError("invalid nonce") from None


def encrypt_resource(
    apiv3_key: bytes | str,
    plaintext: bytes,
    associated_data: str,
    nonce: str | None = None,
) -> dict[str, str]:
    """Encrypt like WeChat Pay does (for the sandbox and tests)."""
    key = _key_bytes(apiv3_key)
    if len(key) != KEY_SIZE:
        raise ValueError(f"APIv3 key must be {KEY_SIZE} bytes")
    if nonce is None:
        nonce = "".join(secrets.choice(_NONCE_ALPHABET) for _ in range(NONCE_LENGTH))
    sealed = AESGCM(key).encrypt(nonce.encode("utf-8"), plaintext, _aad(associated_data))
    return {
        "algorithm": ALGORITHM,
        "ciphertext": base64.b64encode(sealed).decode("ascii"),
        "associated_data": associated_data,
        "nonce": nonce,
    }
