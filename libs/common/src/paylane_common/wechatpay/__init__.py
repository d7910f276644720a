"""WeChat Pay API v3 crypto: signatures, verification keys, AEAD resources, notifications."""

from paylane_common.wechatpay.aead import ALGORITHM, decrypt_resource, encrypt_resource
from paylane_common.wechatpay.bills import (
    BadRecord,
    BillFile,
    BillFormatError,
    FundFlowBill,
    FundFlowRecord,
    TradeBill,
    TradeBillRecord,
    parse_fund_flow_bill,
    parse_trade_bill,
)
from paylane_common.wechatpay.certificates import CertificateRefresher
from paylane_common.wechatpay.client import (
    ABNORMAL_REFUND_TYPES,
    AbnormalRefundType,
    PlatformCertificate,
    WechatPayClient,
)
from paylane_common.wechatpay.exceptions import (
    DecryptionError,
    ResponseVerificationError,
    VerificationError,
    WechatPayApiError,
    WechatPayError,
    WechatPayUnavailable,
)
from paylane_common.wechatpay.keys import (
    CertificateInfo,
    VerifierKeys,
    certificate_serial,
    load_certificate,
    load_private_key,
    load_public_key,
    read_certificate,
)
from paylane_common.wechatpay.merchant import MerchantSigner, new_nonce, parse_authorization
from paylane_common.wechatpay.notification import (
    build_notification,
    decrypt_notification,
    parse_notification,
    signed_headers,
)
from paylane_common.wechatpay.privacy import decrypt_field, encrypt_field
from paylane_common.wechatpay.signature import (
    SIGNATURE_TYPE,
    SIGNTEST_PREFIX,
    NotificationHeaders,
    NotificationVerifier,
    build_message,
    clock_skew,
    is_stale,
    sign,
    verify_rsa,
)

__all__ = [
    "ABNORMAL_REFUND_TYPES",
    "ALGORITHM",
    "SIGNATURE_TYPE",
    "SIGNTEST_PREFIX",
    "AbnormalRefundType",
    "BadRecord",
    "BillFile",
    "BillFormatError",
    "CertificateInfo",
    "CertificateRefresher",
    "DecryptionError",
    "FundFlowBill",
    "FundFlowRecord",
    "MerchantSigner",
    "NotificationHeaders",
    "NotificationVerifier",
    "PlatformCertificate",
    "ResponseVerificationError",
    "TradeBill",
    "TradeBillRecord",
    "VerificationError",
    "VerifierKeys",
    "WechatPayApiError",
    "WechatPayClient",
    "WechatPayError",
    "WechatPayUnavailable",
    "build_message",
    "build_notification",
    "certificate_serial",
    "clock_skew",
    "decrypt_field",
    "decrypt_notification",
    "decrypt_resource",
    "encrypt_field",
    "encrypt_resource",
    "is_stale",
    "load_certificate",
    "load_private_key",
    "load_public_key",
    "new_nonce",
    "parse_authorization",
    "parse_fund_flow_bill",
    "parse_notification",
    "parse_trade_bill",
    "read_certificate",
    "sign",
    "signed_headers",
    "verify_rsa",
]
