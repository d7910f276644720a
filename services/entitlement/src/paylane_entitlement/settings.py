"""Entitlement service settings (docs/configuration.md)."""

from __future__ import annotations

from pydantic import Field

from paylane_common.runtime.settings import BaseServiceSettings, CatalogSettings, ConsumerSettings


class EntitlementSettings(BaseServiceSettings, ConsumerSettings, CatalogSettings):
    http_port: int = Field(8082, ge=1, le=65535)
    admin_port: int = Field(9082, ge=1, le=65535)
