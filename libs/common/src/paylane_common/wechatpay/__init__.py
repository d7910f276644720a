"""WeChat Pay API v3 crypto: signatures, verification keys, AEAD resources, notifications."""

from .aead import ALGORITHM, decrypt_resource, encrypt_resource
from .certificates import CertificateRefresher
from .client import PlatformCertificate, WechatPayClient
from .exceptions import (
    DecryptionError,
    ResponseVerificationError,
    VerificationError,
    WechatPayApiError,
    WechatPayError,
    WechatPayUnavailable,
)
from .keys import (
    CertificateInfo,
    VerifierKeys,
    certificate_serial,
    load_certificate,
    load_private_key,
    load_public_key,
    read_certificate,
)
from .merchant import MerchantSigner, new_nonce, parse_authorization
from .notification import (
    build_notification,
    decrypt_notification,
    parse_notification,
    signed_headers,
)
from .signature import (
    SIGNATURE_TYPE,
    SIGNTEST_PREFIX,
    NotificationHeaders,
    NotificationVerifier,
    build_message,
    sign,
    verify_rsa,
)

__all__ = [
    "ALGORITHM",
    "SIGNATURE_TYPE",
    "SIGNTEST_PREFIX",
    "CertificateInfo",
    "CertificateRefresher",
    "DecryptionError",
    "MerchantSigner",
    "NotificationHeaders",
    "NotificationVerifier",
    "PlatformCertificate",
    "ResponseVerificationError",
    "VerificationError",
    "VerifierKeys",
    "WechatPayApiError",
    "WechatPayClient",
    "WechatPayError",
    "WechatPayUnavailable",
    "build_message",
    "build_notification",
    "certificate_serial",
    "decrypt_notification",
    "decrypt_resource",
    "encrypt_resource",
    "load_certificate",
    "load_private_key",
    "load_public_key",
    "new_nonce",
    "parse_authorization",
    "parse_notification",
    "read_certificate",
    "sign",
    "signed_headers",
    "verify_rsa",
]
