"""Sensitive fields encrypted for WeChat Pay (RSA-OAEP, SHA-1): checked against the
independent SDK wechatpayv3, which plays both sides here, and the key they go under."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from wechatpayv3.utils import rsa_decrypt, rsa_encrypt

from paylane_common.wechatpay import (
    DecryptionError,
    VerifierKeys,
    WechatPayError,
    decrypt_field,
    encrypt_field,
)
from paylane_common.wechatpay.privacy import max_plaintext_bytes
from paylane_common.wechatpay.testing import new_private_key

ACCOUNT = "6214830000000000"
NAME = "张三"


@pytest.fixture(scope="module")
def platform_key() -> RSAPrivateKey:
    return new_private_key()


@pytest.mark.parametrize("plaintext", [ACCOUNT, NAME, ""])
def test_wechatpayv3_decrypts_what_paylane_encrypts(
    platform_key: RSAPrivateKey, plaintext: str
) -> None:
    ciphertext = encrypt_field(platform_key.public_key(), plaintext)
    assert rsa_decrypt(ciphertext, platform_key) == plaintext


@pytest.mark.parametrize("plaintext", [ACCOUNT, NAME])
def test_paylane_decrypts_what_wechatpayv3_encrypts(
    platform_key: RSAPrivateKey, plaintext: str
) -> None:
    ciphertext = rsa_encrypt(plaintext, platform_key.public_key())
    assert decrypt_field(platform_key, ciphertext) == plaintext


def test_each_encryption_differs_and_is_one_key_sized_block(platform_key: RSAPrivateKey) -> None:
    first, second = (encrypt_field(platform_key.public_key(), ACCOUNT) for _ in range(2))
    assert first != second  # OAEP is randomised
    assert len(base64.b64decode(first)) == platform_key.key_size // 8


def test_other_paddings_do_not_pass_for_oaep_sha1(platform_key: RSAPrivateKey) -> None:
    public = platform_key.public_key()
    sha256 = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    for wrong in (padding.PKCS1v15(), sha256):
        ciphertext = base64.b64encode(public.encrypt(ACCOUNT.encode(), wrong)).decode()
        with pytest.raises(DecryptionError) as caught:
            decrypt_field(platform_key, ciphertext)
        assert ACCOUNT not in str(caught.value)


def test_wrong_key_and_bad_base64_are_decryption_errors(platform_key: RSAPrivateKey) -> None:
    ciphertext = encrypt_field(new_private_key().public_key(), ACCOUNT)
    with pytest.raises(DecryptionError):
        decrypt_field(platform_key, ciphertext)
    with pytest.raises(DecryptionError):
        decrypt_field(platform_key, "not base64 at all!")


def test_plaintext_longer_than_one_block_is_refused(platform_key: RSAPrivateKey) -> None:
    public = platform_key.public_key()
    assert max_plaintext_bytes(public) == 214  # 2048-bit key, SHA-1 OAEP
    fits = "x" * 214
    assert decrypt_field(platform_key, encrypt_field(public, fits)) == fits
    with pytest.raises(WechatPayError, match="at most 214"):
        encrypt_field(public, fits + "x")


def test_public_key_mode_encrypts_under_the_public_key_and_names_its_id() -> None:
    public_key = new_private_key().public_key()
    certificate_key = new_private_key().public_key()
    keys = VerifierKeys("PUB_KEY_ID_0114", public_key, {"5157F09E": certificate_key})
    assert keys.encryption_key(at=time.time()) == ("PUB_KEY_ID_0114", public_key)


def test_certificate_mode_encrypts_under_the_newest_valid_certificate() -> None:
    now = datetime.now(UTC)
    old, new, expired, future = (new_private_key().public_key() for _ in range(4))
    keys = VerifierKeys()
    keys.add_certificate(
        "0A", old, not_before=now - timedelta(days=300), not_after=now + timedelta(days=10)
    )
    keys.add_certificate(
        "0B", new, not_before=now - timedelta(days=1), not_after=now + timedelta(days=1800)
    )
    keys.add_certificate(
        "0C", expired, not_before=now - timedelta(days=900), not_after=now - timedelta(seconds=1)
    )
    keys.add_certificate(
        "0D", future, not_before=now + timedelta(days=1), not_after=now + timedelta(days=3000)
    )
    assert keys.encryption_key(at=now.timestamp()) == ("0B", new)


def test_the_serial_named_is_the_certificate_encrypted_under() -> None:
    """Two overlapping certificates of different terms: the older one outlives the newer.
    WeChat decrypts the fields with the certificate ``Wechatpay-Serial`` names, so the
    serial sent and the key used are one certificate: the newest issued."""
    now = datetime.now(UTC)
    older, newer = (new_private_key().public_key() for _ in range(2))
    keys = VerifierKeys()
    keys.add_certificate(
        "0A", older, not_before=now - timedelta(days=30), not_after=now + timedelta(days=1800)
    )
    keys.add_certificate(
        "0B", newer, not_before=now - timedelta(days=1), not_after=now + timedelta(days=300)
    )
    at = now.timestamp()
    assert keys.encryption_key(at=at) == ("0B", newer)
    assert keys.request_serial(at) == "0B"


def test_no_key_to_encrypt_with_is_an_error() -> None:
    now = datetime.now(UTC)
    keys = VerifierKeys()
    with pytest.raises(WechatPayError, match="no WeChat Pay key"):
        keys.encryption_key(at=now.timestamp())
    keys.add_certificate("0C", new_private_key().public_key(), not_after=now - timedelta(seconds=1))
    with pytest.raises(WechatPayError, match="no WeChat Pay key"):
        keys.encryption_key(at=now.timestamp())
