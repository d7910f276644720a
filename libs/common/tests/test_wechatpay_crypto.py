"""Unit tests of paylane_common.wechatpay against the shared WeChat Pay v3 test vectors."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from wechatpayv3 import WeChatPay, WeChatPayType

from paylane_common.wechatpay import (
    SIGNATURE_TYPE,
    DecryptionError,
    MerchantSigner,
    NotificationHeaders,
    NotificationVerifier,
    VerificationError,
    VerifierKeys,
    WechatPayError,
    build_message,
    build_notification,
    decrypt_notification,
    decrypt_resource,
    encrypt_resource,
    load_certificate,
    load_private_key,
    load_public_key,
    parse_authorization,
    parse_notification,
    sign,
    verify_rsa,
)
from paylane_common.wechatpay import testing as kit

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "wechatpay_v3.json").read_text(encoding="utf-8")
)
NOW: int = VECTORS["now"]
APIV3_KEY: str = VECTORS["apiv3_key"]
PUB_KEY_ID: str = VECTORS["platform_public_key_id"]
NOTIFICATIONS: list[dict[str, Any]] = VECTORS["notifications"]
VALID = [n for n in NOTIFICATIONS if n["valid"]]
CERT_SERIAL_INT = 0x5157F09EFDC096DE15EBE81A47057A7232F1B8E1
CERT_SERIAL = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
TRANSACTION = VALID[0]["resource_plaintext"]


# --- fixtures -------------------------------------------------------------------------------


def self_signed_cert(
    key: RSAPrivateKey,
    serial: int,
    start: datetime = datetime(2025, 1, 1, tzinfo=UTC),
    lifetime: timedelta = timedelta(days=5 * 365),
) -> x509.Certificate:
    """A platform certificate with a known serial and validity (the tests check both)."""
    return kit.self_signed_certificate(key, serial=serial, not_before=start, lifetime=lifetime)


@pytest.fixture(scope="module")
def platform_public_key() -> RSAPublicKey:
    return load_public_key(VECTORS["platform_public_key_pem"])


@pytest.fixture(scope="module")
def merchant_key() -> RSAPrivateKey:
    return load_private_key(VECTORS["merchant_private_key_pem"])


@pytest.fixture(scope="module")
def merchant_public_key() -> RSAPublicKey:
    return load_public_key(VECTORS["merchant_public_key_pem"])


@pytest.fixture(scope="module")
def cert_key() -> RSAPrivateKey:
    return kit.new_private_key()


@pytest.fixture(scope="module")
def cert(cert_key: RSAPrivateKey) -> x509.Certificate:
    return self_signed_cert(cert_key, CERT_SERIAL_INT)


@pytest.fixture(scope="module")
def other_key() -> RSAPrivateKey:
    return kit.new_private_key()


@pytest.fixture
def verifier(platform_public_key: RSAPublicKey) -> NotificationVerifier:
    return NotificationVerifier(VerifierKeys(PUB_KEY_ID, platform_public_key), clock=lambda: NOW)


def headers_of(notification: dict[str, Any], **changes: str) -> NotificationHeaders:
    raw = {**notification["headers"], **changes}
    return NotificationHeaders.from_mapping(raw)


def reason_of(call: Callable[[], object]) -> str:
    with pytest.raises(VerificationError) as info:
        call()
    return info.value.reason


# --- test vectors ---------------------------------------------------------------------------


def test_vectors_have_the_expected_cases() -> None:
    assert [n["valid"] for n in NOTIFICATIONS] == [True, True, False, False]


@pytest.mark.parametrize("notification", VALID, ids=lambda n: n["name"])
def test_valid_vector_verifies_and_decrypts(
    verifier: NotificationVerifier, notification: dict[str, Any]
) -> None:
    body = notification["body"].encode("utf-8")
    verifier.verify(NotificationHeaders.from_mapping(notification["headers"]), body)
    parsed = parse_notification(body)
    assert decrypt_notification(parsed, APIV3_KEY) == notification["resource_plaintext"]
    assert decrypt_notification(parsed, APIV3_KEY.encode()) == notification["resource_plaintext"]


@pytest.mark.parametrize(
    ("name", "reason"), [("signtest probe", "signtest_probe"), ("tampered body", "bad_signature")]
)
def test_invalid_vector_is_rejected(verifier: NotificationVerifier, name: str, reason: str) -> None:
    (notification,) = [n for n in NOTIFICATIONS if n["name"] == name]
    assert not notification["valid"]
    body = notification["body"].encode("utf-8")
    assert reason_of(lambda: verifier.verify(headers_of(notification), body)) == reason


def test_signtest_probe_is_rejected_even_though_its_tail_is_a_valid_signature(
    platform_public_key: RSAPublicKey,
) -> None:
    # A verifier that strips the prefix (or ignores it) would accept the probe.
    (probe,) = [n for n in NOTIFICATIONS if n["name"] == "signtest probe"]
    h = probe["headers"]
    tail = h["Wechatpay-Signature"].removeprefix("WECHATPAY/SIGNTEST/")
    message = build_message(h["Wechatpay-Timestamp"], h["Wechatpay-Nonce"], probe["body"])
    assert verify_rsa(platform_public_key, message, tail)


def test_body_is_verified_as_raw_bytes(verifier: NotificationVerifier) -> None:
    notification = VALID[0]
    reserialised = json.dumps(json.loads(notification["body"]), separators=(",", ":")).encode()
    assert reason_of(lambda: verifier.verify(headers_of(notification), reserialised)) == (
        "bad_signature"
    )


# --- tampering ------------------------------------------------------------------------------


def test_one_body_byte_changed(verifier: NotificationVerifier) -> None:
    body = bytearray(VALID[0]["body"].encode())
    body[len(body) // 2] ^= 0x01
    assert reason_of(lambda: verifier.verify(headers_of(VALID[0]), bytes(body))) == (
        "bad_signature"
    )


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"Wechatpay-Timestamp": str(NOW - 1)}, "bad_signature"),
        ({"Wechatpay-Nonce": "008D5BB597E6E3F16DC3CB2BFA3EA878"}, "bad_signature"),
        ({"Wechatpay-Serial": "PUB_KEY_ID_0000000000000000000000"}, "unknown_serial"),
        ({"Wechatpay-Serial": PUB_KEY_ID.lower()}, "unknown_serial"),
        ({"Wechatpay-Serial": CERT_SERIAL}, "unknown_serial"),
        ({"Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA"}, "bad_signature_type"),
        ({"Wechatpay-Signature-Type": "WECHATPAY2-SM2-WITH-SM3"}, "bad_signature_type"),
        ({"Wechatpay-Timestamp": "17637800OO"}, "bad_timestamp"),
        ({"Wechatpay-Timestamp": "1763780000.0"}, "bad_timestamp"),
        ({"Wechatpay-Timestamp": "-1763780000"}, "bad_timestamp"),
        ({"Wechatpay-Timestamp": " 1763780000"}, "bad_timestamp"),
        ({"Wechatpay-Timestamp": str(NOW + 301)}, "stale_timestamp"),
        ({"Wechatpay-Timestamp": str(NOW - 301)}, "stale_timestamp"),
        ({"Wechatpay-Timestamp": str(NOW + 86400)}, "stale_timestamp"),
        ({"Wechatpay-Timestamp": "0"}, "stale_timestamp"),
    ],
    ids=lambda x: json.dumps(x) if isinstance(x, dict) else x,
)
def test_header_tampering(
    verifier: NotificationVerifier, changes: dict[str, str], reason: str
) -> None:
    body = VALID[0]["body"].encode()
    assert reason_of(lambda: verifier.verify(headers_of(VALID[0], **changes), body)) == reason


def signature_variants() -> list[tuple[str, str]]:
    good: str = VALID[0]["headers"]["Wechatpay-Signature"]
    raw = bytearray(base64.b64decode(good))
    raw[0] ^= 0x80
    return [
        ("flipped", base64.b64encode(bytes(raw)).decode()),
        ("truncated", good[:-8]),
        ("truncated_valid_b64", base64.b64encode(base64.b64decode(good)[:-1]).decode()),
        ("not_base64", "this is not base64!"),
        ("non_ascii", "签名" * 20),
        ("other_notification", VALID[1]["headers"]["Wechatpay-Signature"]),
    ]


@pytest.mark.parametrize(("label", "signature"), signature_variants())
def test_signature_tampering(verifier: NotificationVerifier, label: str, signature: str) -> None:
    body = VALID[0]["body"].encode()
    headers = headers_of(VALID[0], **{"Wechatpay-Signature": signature})
    assert reason_of(lambda: verifier.verify(headers, body)) == "bad_signature", label


@pytest.mark.parametrize("skew", [0, -299, 299, 299.5])
def test_skew_below_300s_is_accepted(platform_public_key: RSAPublicKey, skew: int) -> None:
    verifier = NotificationVerifier(
        VerifierKeys(PUB_KEY_ID, platform_public_key), clock=lambda: NOW + skew
    )
    verifier.verify(headers_of(VALID[0]), VALID[0]["body"].encode())


@pytest.mark.parametrize("skew", [-300, 300, 300.5, -301])
def test_skew_of_300s_or_more_is_rejected(platform_public_key: RSAPublicKey, skew: float) -> None:
    """As wechatpay-go (``>= FiveMinute``) and wechatpay-java (``toMinutes() >= 5``)."""
    verifier = NotificationVerifier(
        VerifierKeys(PUB_KEY_ID, platform_public_key), clock=lambda: NOW + skew
    )
    body = VALID[0]["body"].encode()
    assert reason_of(lambda: verifier.verify(headers_of(VALID[0]), body)) == "stale_timestamp"


def test_max_skew_is_configurable(platform_public_key: RSAPublicKey) -> None:
    verifier = NotificationVerifier(
        VerifierKeys(PUB_KEY_ID, platform_public_key), max_skew_s=60, clock=lambda: NOW + 61
    )
    body = VALID[0]["body"].encode()
    assert reason_of(lambda: verifier.verify(headers_of(VALID[0]), body)) == "stale_timestamp"


def test_signature_type_is_optional(verifier: NotificationVerifier) -> None:
    raw = {k: v for k, v in VALID[0]["headers"].items() if k != "Wechatpay-Signature-Type"}
    headers = NotificationHeaders.from_mapping(raw)
    assert headers.signature_type is None
    verifier.verify(headers, VALID[0]["body"].encode())


def test_checks_run_in_the_documented_order(verifier: NotificationVerifier) -> None:
    body = VALID[0]["body"].encode()
    # Each header is wrong; fixing them one by one reveals the next check in line.
    wrong = {
        "Wechatpay-Signature-Type": ("HMAC-SHA256", "bad_signature_type"),
        "Wechatpay-Timestamp": (str(NOW - 1000), "stale_timestamp"),
        "Wechatpay-Signature": ("WECHATPAY/SIGNTEST/AAAA", "signtest_probe"),
        "Wechatpay-Serial": ("NOPE", "unknown_serial"),
    }
    for header, (_, reason) in list(wrong.items()):
        changes = {name: value for name, (value, _) in wrong.items()}
        with pytest.raises(VerificationError) as info:
            verifier.verify(headers_of(VALID[0], **changes), body)
        assert info.value.reason == reason
        del wrong[header]
    verifier.verify(headers_of(VALID[0]), body)


# --- headers --------------------------------------------------------------------------------


REQUIRED_HEADERS = [
    "Wechatpay-Signature",
    "Wechatpay-Timestamp",
    "Wechatpay-Nonce",
    "Wechatpay-Serial",
]


@pytest.mark.parametrize("missing", REQUIRED_HEADERS)
def test_missing_header(missing: str) -> None:
    raw = {k: v for k, v in VALID[0]["headers"].items() if k != missing}
    with pytest.raises(VerificationError) as info:
        NotificationHeaders.from_mapping(raw)
    assert info.value.reason == "missing_header"
    assert missing in str(info.value)


@pytest.mark.parametrize("empty", REQUIRED_HEADERS)
def test_empty_header_counts_as_missing(empty: str) -> None:
    raw = {**VALID[0]["headers"], empty: ""}
    assert reason_of(lambda: NotificationHeaders.from_mapping(raw)) == "missing_header"


def test_header_names_are_case_insensitive(verifier: NotificationVerifier) -> None:
    raw = {k.lower(): v for k, v in VALID[0]["headers"].items()}
    raw = {("WECHATPAY-SERIAL" if k == "wechatpay-serial" else k): v for k, v in raw.items()}
    headers = NotificationHeaders.from_mapping(raw)
    assert headers.serial == PUB_KEY_ID
    assert headers.signature_type == SIGNATURE_TYPE
    verifier.verify(headers, VALID[0]["body"].encode())


def test_verification_messages_do_not_echo_the_signature(verifier: NotificationVerifier) -> None:
    signature = VALID[1]["headers"]["Wechatpay-Signature"]
    with pytest.raises(VerificationError) as info:
        verifier.verify(
            headers_of(VALID[0], **{"Wechatpay-Signature": signature}), VALID[0]["body"].encode()
        )
    assert signature[:16] not in str(info.value)


# --- AEAD -----------------------------------------------------------------------------------


def vector_resource() -> dict[str, str]:
    resource: dict[str, str] = json.loads(VALID[0]["body"])["resource"]
    return resource


def test_decrypt_vector_resource() -> None:
    r = vector_resource()
    plaintext = decrypt_resource(APIV3_KEY, r["nonce"], r["associated_data"], r["ciphertext"])
    assert json.loads(plaintext) == TRANSACTION


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda r: {**r, "key": "0123456789abcdefABCDEF012345678X"}, id="wrong_key"),
        pytest.param(lambda r: {**r, "key": "tooshort"}, id="short_key"),
        pytest.param(lambda r: {**r, "key": APIV3_KEY * 2}, id="long_key"),
        pytest.param(lambda r: {**r, "associated_data": "refund"}, id="wrong_aad"),
        pytest.param(lambda r: {**r, "associated_data": ""}, id="empty_aad"),
        pytest.param(lambda r: {**r, "associated_data": None}, id="no_aad"),
        pytest.param(lambda r: {**r, "nonce": "xVKVVG7MP3Pq"}, id="wrong_nonce"),
        pytest.param(lambda r: {**r, "nonce": ""}, id="empty_nonce"),
        pytest.param(lambda r: {**r, "nonce": "short"}, id="short_nonce"),
        pytest.param(
            lambda r: {
                **r,
                "ciphertext": base64.b64encode(base64.b64decode(r["ciphertext"])[:-1]).decode(),
            },
            id="truncated",
        ),
        pytest.param(
            lambda r: {**r, "ciphertext": base64.b64encode(b"0123456789").decode()},
            id="shorter_than_tag",
        ),
        pytest.param(lambda r: {**r, "ciphertext": ""}, id="empty_ciphertext"),
        pytest.param(lambda r: {**r, "ciphertext": "***not base64***"}, id="bad_base64"),
        pytest.param(lambda r: {**r, "ciphertext": r["ciphertext"][:-3]}, id="bad_padding"),
    ],
)
def test_decrypt_rejects(mutate: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    r = mutate({**vector_resource(), "key": APIV3_KEY})
    with pytest.raises(DecryptionError) as info:
        decrypt_resource(r["key"], r["nonce"], r["associated_data"], r["ciphertext"])
    assert APIV3_KEY not in str(info.value)


def test_decryption_error_is_a_wechatpay_error() -> None:
    assert issubclass(DecryptionError, WechatPayError)
    assert issubclass(VerificationError, WechatPayError)


@pytest.mark.parametrize("aad", ["transaction", "", "certificate"])
def test_encrypt_decrypt_roundtrip(aad: str) -> None:
    plaintext = json.dumps({"金额": 2990}, ensure_ascii=False).encode()
    sealed = encrypt_resource(APIV3_KEY.encode(), plaintext, aad)
    assert sealed["algorithm"] == "AEAD_AES_256_GCM"
    assert sealed["associated_data"] == aad
    assert len(sealed["nonce"]) == 12 and sealed["nonce"].isalnum()
    assert decrypt_resource(APIV3_KEY, sealed["nonce"], aad, sealed["ciphertext"]) == plaintext


def test_empty_aad_and_none_are_the_same() -> None:
    sealed = encrypt_resource(APIV3_KEY, b"{}", "")
    assert decrypt_resource(APIV3_KEY, sealed["nonce"], None, sealed["ciphertext"]) == b"{}"


def test_encrypt_with_fixed_nonce_is_deterministic() -> None:
    a = encrypt_resource(APIV3_KEY, b"x", "refund", nonce="abcdefABCDEF")
    b = encrypt_resource(APIV3_KEY, b"x", "refund", nonce="abcdefABCDEF")
    assert a == b and a["nonce"] == "abcdefABCDEF"


def test_random_nonces_differ() -> None:
    nonces = {encrypt_resource(APIV3_KEY, b"x", "")["nonce"] for _ in range(20)}
    assert len(nonces) == 20


def test_encrypt_rejects_bad_key_length() -> None:
    with pytest.raises(ValueError):
        encrypt_resource(b"short", b"x", "")


# --- notification structure -----------------------------------------------------------------


def body_with(**changes: Any) -> bytes:
    obj = json.loads(VALID[0]["body"])
    resource_changes = changes.pop("resource_changes", {})
    obj.update(changes)
    obj["resource"].update(resource_changes)
    for key in [k for k, v in obj.items() if v is None]:
        del obj[key]
    for key in [k for k, v in obj["resource"].items() if v is None]:
        del obj["resource"][key]
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (b"[" * 100_000, "not valid JSON"),
        (b'{"id": NaN}', "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'"string"', "not a JSON object"),
        (body_with(id=None), "'id'"),
        (body_with(id=""), "'id'"),
        (body_with(event_type=None), "'event_type'"),
        (body_with(event_type=7), "'event_type'"),
        (b'{"id": "x", "event_type": "TRANSACTION.SUCCESS"}', "'resource'"),
        (b'{"id": "x", "event_type": "TRANSACTION.SUCCESS", "resource": "x"}', "'resource'"),
        (body_with(resource_changes={"ciphertext": None}), "'ciphertext'"),
        (body_with(resource_changes={"nonce": None}), "'nonce'"),
        (body_with(resource_changes={"algorithm": "AEAD_SM4_GCM"}), "AEAD_AES_256_GCM"),
        (body_with(resource_changes={"algorithm": None}), "AEAD_AES_256_GCM"),
        (body_with(resource_changes={"associated_data": 5}), "associated_data"),
    ],
)
def test_parse_notification_rejects(body: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_notification(body)


def test_parse_notification_accepts_missing_associated_data() -> None:
    parsed = parse_notification(body_with(resource_changes={"associated_data": None}))
    assert "associated_data" not in parsed["resource"]


def test_decrypt_notification_requires_a_json_object() -> None:
    for plaintext in (b"[1]", b"not json", "支付".encode()):
        sealed = encrypt_resource(APIV3_KEY, plaintext, "transaction")
        body = {"id": "x", "event_type": "T", "resource": sealed}
        with pytest.raises(DecryptionError) as info:
            decrypt_notification(body, APIV3_KEY)
        assert "支付" not in str(info.value)


def test_decrypt_notification_with_wrong_key() -> None:
    parsed = parse_notification(VALID[0]["body"].encode())
    with pytest.raises(DecryptionError):
        decrypt_notification(parsed, "F" * 32)


# --- certificate mode -----------------------------------------------------------------------


def signed_by(
    key: RSAPrivateKey, serial: str, timestamp: int = NOW
) -> tuple[dict[str, str], bytes]:
    return kit.signed_notification(
        TRANSACTION, apiv3_key=APIV3_KEY, signing_key=key, serial=serial, timestamp=timestamp
    )


def test_load_certificate(cert: x509.Certificate, cert_key: RSAPrivateKey) -> None:
    serial, key, not_after = load_certificate(kit.certificate_pem(cert).encode())
    assert serial == CERT_SERIAL
    assert key.public_numbers() == cert_key.public_key().public_numbers()
    assert not_after == datetime(2025, 1, 1, tzinfo=UTC) + timedelta(days=5 * 365)
    from_cert = load_public_key(kit.certificate_pem(cert))
    assert from_cert.public_numbers() == cert_key.public_key().public_numbers()


def test_certificate_serial_keeps_leading_zero_byte(cert_key: RSAPrivateKey) -> None:
    serial, _, _ = load_certificate(kit.certificate_pem(self_signed_cert(cert_key, 0x0ABC)))
    assert serial == "0ABC"


def test_certificate_mode_verifies_by_cert_serial(
    cert: x509.Certificate, cert_key: RSAPrivateKey
) -> None:
    serial, key, _ = load_certificate(kit.certificate_pem(cert))
    verifier = NotificationVerifier(VerifierKeys(certificates={serial: key}), clock=lambda: NOW)
    headers, body = signed_by(cert_key, CERT_SERIAL)
    verifier.verify(NotificationHeaders.from_mapping(headers), body)
    for variant in (CERT_SERIAL.lower(), "00" + CERT_SERIAL):
        verifier.verify(
            NotificationHeaders.from_mapping({**headers, "Wechatpay-Serial": variant}), body
        )
    assert decrypt_notification(parse_notification(body), APIV3_KEY) == TRANSACTION


def test_both_modes_pick_the_key_by_serial(
    platform_public_key: RSAPublicKey, cert: x509.Certificate, cert_key: RSAPrivateKey
) -> None:
    keys = VerifierKeys(PUB_KEY_ID, platform_public_key, {CERT_SERIAL: cert_key.public_key()})
    assert keys.serials() == [PUB_KEY_ID, CERT_SERIAL]
    assert keys.get(PUB_KEY_ID) is platform_public_key
    assert keys.get(CERT_SERIAL.lower()) is not None
    assert keys.get("DEADBEEF") is None
    verifier = NotificationVerifier(keys, clock=lambda: NOW)
    verifier.verify(headers_of(VALID[0]), VALID[0]["body"].encode())
    headers, body = signed_by(cert_key, CERT_SERIAL)
    verifier.verify(NotificationHeaders.from_mapping(headers), body)


def test_cert_signature_under_public_key_id_is_rejected(
    platform_public_key: RSAPublicKey, cert_key: RSAPrivateKey
) -> None:
    keys = VerifierKeys(PUB_KEY_ID, platform_public_key, {CERT_SERIAL: cert_key.public_key()})
    verifier = NotificationVerifier(keys, clock=lambda: NOW)
    headers, body = signed_by(cert_key, PUB_KEY_ID)
    assert (
        reason_of(lambda: verifier.verify(NotificationHeaders.from_mapping(headers), body))
        == "bad_signature"
    )


def test_foreign_key_with_known_serial_is_rejected(
    cert_key: RSAPrivateKey, other_key: RSAPrivateKey
) -> None:
    verifier = NotificationVerifier(
        VerifierKeys(certificates={CERT_SERIAL: cert_key.public_key()}), clock=lambda: NOW
    )
    headers, body = signed_by(other_key, CERT_SERIAL)
    assert (
        reason_of(lambda: verifier.verify(NotificationHeaders.from_mapping(headers), body))
        == "bad_signature"
    )


def test_add_certificate_later(cert_key: RSAPrivateKey) -> None:
    keys = VerifierKeys()
    verifier = NotificationVerifier(keys, clock=lambda: NOW)
    headers, body = signed_by(cert_key, CERT_SERIAL)
    parsed_headers = NotificationHeaders.from_mapping(headers)
    assert reason_of(lambda: verifier.verify(parsed_headers, body)) == "unknown_serial"
    keys.add_certificate(CERT_SERIAL.lower(), cert_key.public_key())
    assert keys.serials() == [CERT_SERIAL]
    verifier.verify(parsed_headers, body)


def test_from_sources_loads_cert_dir(
    tmp_path: Path, cert: x509.Certificate, cert_key: RSAPrivateKey, other_key: RSAPrivateKey
) -> None:
    second_serial = 0x1F2E3D4C5B6A79880123456789ABCDEF01234567
    (tmp_path / "wechatpay_5157.pem").write_text(kit.certificate_pem(cert))
    (tmp_path / "second.crt").write_text(
        kit.certificate_pem(self_signed_cert(other_key, second_serial))
    )
    (tmp_path / "README.txt").write_text("not a certificate")
    keys = VerifierKeys.from_sources(PUB_KEY_ID, VECTORS["platform_public_key_pem"], tmp_path)
    assert sorted(keys.serials()) == sorted(
        [PUB_KEY_ID, CERT_SERIAL, "1F2E3D4C5B6A79880123456789ABCDEF01234567"]
    )
    verifier = NotificationVerifier(keys, clock=lambda: NOW)
    headers, body = signed_by(cert_key, CERT_SERIAL)
    verifier.verify(NotificationHeaders.from_mapping(headers), body)
    headers, body = signed_by(other_key, "1F2E3D4C5B6A79880123456789ABCDEF01234567")
    verifier.verify(NotificationHeaders.from_mapping(headers), body)
    verifier.verify(headers_of(VALID[1]), VALID[1]["body"].encode())


DAY = timedelta(days=1)


@pytest.mark.parametrize(
    ("start", "lifetime", "valid_at"),
    [
        (-10 * DAY, 9 * DAY, -5 * DAY),  # expired a day before NOW
        (DAY, 365 * DAY, 2 * DAY),  # valid from tomorrow
    ],
    ids=["past_not_after", "before_not_before"],
)
def test_certificate_outside_its_validity_does_not_verify(
    tmp_path: Path,
    cert_key: RSAPrivateKey,
    start: timedelta,
    lifetime: timedelta,
    valid_at: timedelta,
) -> None:
    now = datetime.fromtimestamp(NOW, UTC)
    cert = self_signed_cert(cert_key, CERT_SERIAL_INT, now + start, lifetime)
    (tmp_path / "platform.pem").write_text(kit.certificate_pem(cert))
    keys = VerifierKeys.from_sources(platform_certs_dir=tmp_path)
    headers, body = signed_by(cert_key, CERT_SERIAL)
    parsed = NotificationHeaders.from_mapping(headers)
    verifier = NotificationVerifier(keys, clock=lambda: NOW)
    assert reason_of(lambda: verifier.verify(parsed, body)) == "expired_certificate"
    # The same key, inside the window (a clock there, and the message signed then), verifies.
    then = NOW + int(valid_at.total_seconds())
    headers, body = signed_by(cert_key, CERT_SERIAL, timestamp=then)
    NotificationVerifier(keys, clock=lambda: then).verify(
        NotificationHeaders.from_mapping(headers), body
    )


def test_added_certificate_keeps_its_validity(cert_key: RSAPrivateKey) -> None:
    keys = VerifierKeys()
    now = datetime.fromtimestamp(NOW, UTC)
    keys.add_certificate(
        CERT_SERIAL, cert_key.public_key(), not_before=now - 10 * DAY, not_after=now - DAY
    )
    headers, body = signed_by(cert_key, CERT_SERIAL)
    parsed = NotificationHeaders.from_mapping(headers)
    verifier = NotificationVerifier(keys, clock=lambda: NOW)
    assert reason_of(lambda: verifier.verify(parsed, body)) == "expired_certificate"
    # A refresh that brings the renewed certificate (same serial, new window) replaces it.
    keys.add_certificate(
        CERT_SERIAL, cert_key.public_key(), not_before=now - DAY, not_after=now + DAY
    )
    verifier.verify(parsed, body)


def test_from_sources_cert_dir_only(tmp_path: Path, cert: x509.Certificate) -> None:
    (tmp_path / "cert.pem").write_text(kit.certificate_pem(cert))
    keys = VerifierKeys.from_sources(platform_certs_dir=str(tmp_path))
    assert keys.serials() == [CERT_SERIAL]
    assert keys.public_key_id is None


def test_from_sources_rejects_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(WechatPayError, match="not found"):
        VerifierKeys.from_sources(platform_certs_dir=tmp_path / "missing")
    with pytest.raises(WechatPayError):
        VerifierKeys.from_sources(public_key_id=PUB_KEY_ID)
    (tmp_path / "broken.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n")
    with pytest.raises(WechatPayError, match=r"broken\.pem"):
        VerifierKeys.from_sources(platform_certs_dir=tmp_path)


def test_verifier_keys_require_id_and_key_together(platform_public_key: RSAPublicKey) -> None:
    with pytest.raises(ValueError):
        VerifierKeys(public_key_id=PUB_KEY_ID)
    with pytest.raises(ValueError):
        VerifierKeys(public_key=platform_public_key)


def test_key_loaders_reject_garbage_without_echoing_it() -> None:
    secret = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n"
    with pytest.raises(WechatPayError) as info:
        load_private_key(secret)
    assert "c2VjcmV0" not in str(info.value)
    with pytest.raises(WechatPayError):
        load_public_key("not a key")
    with pytest.raises(WechatPayError):
        load_certificate(VECTORS["platform_public_key_pem"])


# --- merchant signing -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def signer(merchant_key: RSAPrivateKey) -> MerchantSigner:
    return MerchantSigner(VECTORS["mchid"], VECTORS["merchant_serial_no"], merchant_key)


@pytest.mark.parametrize("request_vector", VECTORS["requests"], ids=lambda r: r["method"])
def test_authorization_matches_vector(
    signer: MerchantSigner, merchant_public_key: RSAPublicKey, request_vector: dict[str, Any]
) -> None:
    r = request_vector
    header = signer.authorization(
        r["method"],
        r["path_with_query"],
        r["body"],
        timestamp=int(r["timestamp"]),
        nonce=r["nonce_str"],
    )
    assert header == r["authorization"]
    attrs = parse_authorization(header)
    assert attrs == {
        "mchid": VECTORS["mchid"],
        "nonce_str": r["nonce_str"],
        "signature": attrs["signature"],
        "timestamp": r["timestamp"],
        "serial_no": VECTORS["merchant_serial_no"],
    }
    message = build_message(
        r["method"], r["path_with_query"], r["timestamp"], r["nonce_str"], r["body"]
    )
    assert verify_rsa(merchant_public_key, message, attrs["signature"])
    # bytes body and lower-case method give the same header
    assert (
        signer.authorization(
            r["method"].lower(),
            r["path_with_query"],
            r["body"].encode(),
            timestamp=int(r["timestamp"]),
            nonce=r["nonce_str"],
        )
        == header
    )


def test_authorization_uses_clock_and_nonce_factory(merchant_key: RSAPrivateKey) -> None:
    signer = MerchantSigner(
        "1900000109", "ABC", merchant_key, clock=lambda: NOW + 0.9, nonce_factory=lambda: "N1"
    )
    attrs = parse_authorization(signer.authorization("GET", "/v3/certificates"))
    assert attrs["timestamp"] == str(NOW) and attrs["nonce_str"] == "N1"


def test_default_nonces_are_random(signer: MerchantSigner) -> None:
    a = parse_authorization(signer.authorization("GET", "/v3/certificates"))["nonce_str"]
    b = parse_authorization(signer.authorization("GET", "/v3/certificates"))["nonce_str"]
    assert a != b and len(a) == 32


def test_authorization_requires_a_path(signer: MerchantSigner) -> None:
    with pytest.raises(ValueError):
        signer.authorization("GET", "https://api.mch.weixin.qq.com/v3/certificates")


@pytest.mark.parametrize(
    "header",
    [
        'Bearer mchid="1"',
        'WECHATPAY2-SHA256-RSA2048 mchid="1",nonce_str="n",timestamp="1",serial_no="s"',
        'WECHATPAY2-SHA256-RSA2048 mchid="1",mchid="2",nonce_str="n",signature="x",'
        'timestamp="1",serial_no="s"',
        'WECHATPAY2-SHA256-RSA2048 mchid=1,nonce_str="n",signature="x",timestamp="1",serial_no="s"',
        "",
    ],
)
def test_parse_authorization_rejects(header: str) -> None:
    with pytest.raises(ValueError):
        parse_authorization(header)


def test_parse_authorization_accepts_any_order_and_spaces() -> None:
    header = (
        'WECHATPAY2-SHA256-RSA2048 serial_no="S", timestamp="1", signature="a+b/c==",'
        ' nonce_str="n", mchid="1"'
    )
    assert parse_authorization(header) == {
        "serial_no": "S",
        "timestamp": "1",
        "signature": "a+b/c==",
        "nonce_str": "n",
        "mchid": "1",
    }


def test_jsapi_pay_params_match_vector(
    signer: MerchantSigner, merchant_public_key: RSAPublicKey
) -> None:
    expected = VECTORS["pay_sign"][0]
    params = signer.jsapi_pay_params(
        expected["appId"],
        expected["package"].removeprefix("prepay_id="),
        timestamp=int(expected["timeStamp"]),
        nonce=expected["nonceStr"],
    )
    assert params == expected
    assert list(params) == ["appId", "timeStamp", "nonceStr", "package", "signType", "paySign"]
    message = build_message(
        params["appId"], params["timeStamp"], params["nonceStr"], params["package"]
    )
    assert verify_rsa(merchant_public_key, message, params["paySign"])


def test_app_pay_params_are_the_official_sdks_and_wechatpayv3_signs_the_same() -> None:
    """Names and ``Sign=WXPay`` as wechatpay-go / wechatpay-java's
    ``PrepayWithRequestPayment`` return them; the ``sign`` byte for byte what the independent
    SDK computes over ``[appid, timestamp, noncestr, prepayid]`` (PKCS#1 v1.5 is
    deterministic), so the two cannot share a mistake in the message."""
    signer = MerchantSigner(
        VECTORS["mchid"],
        VECTORS["merchant_serial_no"],
        load_private_key(VECTORS["merchant_private_key_pem"]),
    )
    prepay_id = "wx201410272009395522657a690389285100"
    params = signer.app_pay_params(
        "wx8888888888888888", prepay_id, timestamp=NOW, nonce="5K8264ILTKCH16CQ2502SI8ZNMTM67VS"
    )
    assert list(params) == [
        "appid",
        "partnerid",
        "prepayid",
        "package",
        "noncestr",
        "timestamp",
        "sign",
    ]
    assert params["partnerid"] == VECTORS["mchid"]
    assert (params["package"], params["prepayid"]) == ("Sign=WXPay", prepay_id)
    assert params["timestamp"] == str(NOW)
    independent = WeChatPay(
        wechatpay_type=WeChatPayType.APP,
        mchid=VECTORS["mchid"],
        private_key=VECTORS["merchant_private_key_pem"],
        cert_serial_no=VECTORS["merchant_serial_no"],
        appid="wx8888888888888888",
        apiv3_key=APIV3_KEY,
        public_key=VECTORS["platform_public_key_pem"],
        public_key_id=PUB_KEY_ID,
    )
    expected = independent.sign(
        ["wx8888888888888888", params["timestamp"], params["noncestr"], prepay_id]
    )
    assert params["sign"] == expected


def test_sign_and_verify_rsa(other_key: RSAPrivateKey, merchant_public_key: RSAPublicKey) -> None:
    message = build_message("a", b"b\xff", "支付")
    assert message == b"a\nb\xff\n" + "支付".encode() + b"\n"
    signature = sign(other_key, message)
    assert verify_rsa(other_key.public_key(), message, signature)
    assert not verify_rsa(merchant_public_key, message, signature)
    assert not verify_rsa(other_key.public_key(), message + b"x", signature)
    assert not verify_rsa(other_key.public_key(), message, "")


# --- build_notification ---------------------------------------------------------------------


def test_build_notification_roundtrip(
    platform_public_key: RSAPublicKey, other_key: RSAPrivateKey
) -> None:
    refund = VALID[1]["resource_plaintext"]
    headers, body = build_notification(
        event_id="EV-1",
        event_type="REFUND.SUCCESS",
        resource_plaintext=refund,
        original_type="refund",
        apiv3_key=APIV3_KEY,
        signing_key=other_key,
        serial=PUB_KEY_ID,
        timestamp=NOW,
        nonce="NONCE1",
        summary="退款状态",
    )
    assert headers["Content-Type"] == "application/json"
    assert headers["Wechatpay-Signature-Type"] == SIGNATURE_TYPE
    assert headers["Wechatpay-Timestamp"] == str(NOW)
    assert headers["Wechatpay-Nonce"] == "NONCE1"
    assert "退款状态".encode() in body and b", " not in body
    verifier = NotificationVerifier(
        VerifierKeys(PUB_KEY_ID, other_key.public_key()), clock=lambda: NOW
    )
    verifier.verify(NotificationHeaders.from_mapping(headers), body)
    parsed = parse_notification(body)
    assert parsed["id"] == "EV-1"
    assert parsed["event_type"] == "REFUND.SUCCESS"
    assert parsed["create_time"] == "2025-11-22T10:53:20+08:00"
    assert parsed["resource_type"] == "encrypt-resource"
    assert parsed["resource"]["original_type"] == "refund"
    assert parsed["resource"]["associated_data"] == "refund"
    assert decrypt_notification(parsed, APIV3_KEY) == refund
    # the vector's platform key does not verify a notification signed by another key
    wrong = NotificationVerifier(VerifierKeys(PUB_KEY_ID, platform_public_key), clock=lambda: NOW)
    assert (
        reason_of(lambda: wrong.verify(NotificationHeaders.from_mapping(headers), body))
        == "bad_signature"
    )


def test_build_notification_defaults(other_key: RSAPrivateKey) -> None:
    headers, body = build_notification(
        event_id="EV-2",
        event_type="TRANSACTION.SUCCESS",
        resource_plaintext=TRANSACTION,
        original_type="transaction",
        apiv3_key=APIV3_KEY.encode(),
        signing_key=other_key,
        serial=CERT_SERIAL,
        create_time="2025-11-22T10:00:00+08:00",
        resource_nonce="abcdefghijkl",
    )
    parsed = parse_notification(body)
    assert parsed["summary"] == "支付成功"
    assert parsed["create_time"] == "2025-11-22T10:00:00+08:00"
    assert parsed["resource"]["nonce"] == "abcdefghijkl"
    assert len(headers["Wechatpay-Nonce"]) == 32
    verifier = NotificationVerifier(
        VerifierKeys(certificates={CERT_SERIAL: other_key.public_key()})
    )
    verifier.verify(NotificationHeaders.from_mapping(headers), body)
