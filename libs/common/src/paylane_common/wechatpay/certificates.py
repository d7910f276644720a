"""Background platform-certificate refresh: a new ``Wechatpay-Serial`` becomes valid
without a restart and without any network call inside a notification request."""

from __future__ import annotations

import asyncio
import time

import structlog

from paylane_common.runtime.background import BackgroundLoop
from paylane_common.wechatpay.client import WechatPayClient
from paylane_common.wechatpay.keys import VerifierKeys

log = structlog.get_logger(__name__)


class CertificateRefresher(BackgroundLoop):
    """Downloads ``/v3/certificates`` every ``interval_s`` and on request (an unknown
    serial was seen), never more often than once per ``min_gap_s``. Each certificate
    keeps its validity window: past ``not_after`` it verifies nothing."""

    def __init__(
        self,
        client: WechatPayClient,
        keys: VerifierKeys,
        apiv3_key: str,
        *,
        interval_s: float = 6 * 3600,
        min_gap_s: float = 60.0,
    ) -> None:
        self._client = client
        self._keys = keys
        self._apiv3_key = apiv3_key
        self._interval_s = interval_s
        self._min_gap_s = min_gap_s
        self._requested = asyncio.Event()
        self._last_attempt = float("-inf")
        self._lock = asyncio.Lock()
        self.task_name = "certificate-refresh"
        client.key_refresh = self

    async def refresh_now(self) -> bool:
        """Download now (an API answer named an unknown serial), unless a download started
        less than ``min_gap_s`` ago; True when it downloaded. Concurrent callers share one
        download; a failed download is logged and reported as False."""
        async with self._lock:
            if time.monotonic() - self._last_attempt < self._min_gap_s:
                return False
            try:
                await self.refresh_once()
            except Exception as exc:
                log.warning("platform_certificates_refresh_failed", error=str(exc))
                return False
            return True

    def request_refresh(self) -> None:
        """Ask for a refresh soon; returns at once (rate-limited in the background)."""
        self._requested.set()

    async def refresh_once(self) -> int:
        """Download and add the certificates; return how many serials were new."""
        self._last_attempt = time.monotonic()
        known = set(self._keys.serials())
        added = 0
        for cert in await self._client.download_certificates(self._apiv3_key):
            if cert.serial not in known:
                added += 1
            self._keys.add_certificate(
                cert.serial, cert.public_key, not_before=cert.not_before, not_after=cert.not_after
            )
        log.info("platform_certificates_refreshed", new=added, serials=self._keys.serials())
        return added

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._requested.wait(), self._interval_s)
            except TimeoutError:
                pass
            wait = self._last_attempt + self._min_gap_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._requested.clear()
            try:
                async with self._lock:  # refresh_now waits for this download, then re-verifies
                    await self.refresh_once()
            except Exception as exc:
                log.warning("platform_certificates_refresh_failed", error=str(exc))
