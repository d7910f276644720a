"""Ingress settings: the APIv3 key and the WeChat Pay verification keys (DESIGN §2)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator

from paylane_common.settings import BaseServiceSettings
from paylane_common.wechatpay import VerifierKeys, WechatPayError, load_public_key


class IngressSettings(BaseServiceSettings):
    http_port: int = Field(8080, ge=1, le=65535)
    wechatpay_apiv3_key: SecretStr
    wechatpay_public_key: SecretStr | None = None
    wechatpay_public_key_id: str | None = None
    wechatpay_platform_certs_dir: Path | None = None
    notify_max_skew_s: int = Field(300, ge=1, le=3600)
    internal_api_secret: SecretStr | None = None

    @field_validator("wechatpay_apiv3_key")
    @classmethod
    def _key_is_32_bytes(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value().encode()) != 32:
            raise ValueError("must be exactly 32 bytes")
        return value

    @field_validator("wechatpay_public_key")
    @classmethod
    def _public_key_parses(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        try:
            load_public_key(value.get_secret_value())
        except WechatPayError:
            raise ValueError("is not a PEM public key or certificate") from None
        return value

    @field_validator("wechatpay_platform_certs_dir")
    @classmethod
    def _certificates_parse(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        if not value.is_dir():
            raise ValueError("is not a directory")
        try:
            VerifierKeys.from_sources(platform_certs_dir=value)
        except WechatPayError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _one_key_mode(self) -> IngressSettings:
        public_key_mode = self.wechatpay_public_key is not None
        if public_key_mode != bool(self.wechatpay_public_key_id):
            raise ValueError(
                "WECHATPAY_PUBLIC_KEY and WECHATPAY_PUBLIC_KEY_ID must be set together"
            )
        if not public_key_mode and self.wechatpay_platform_certs_dir is None:
            raise ValueError(
                "set WECHATPAY_PUBLIC_KEY(+_ID) or WECHATPAY_PLATFORM_CERTS_DIR (or both)"
            )
        return self
