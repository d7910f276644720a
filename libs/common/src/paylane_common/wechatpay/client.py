"""WeChat Pay APIv3 client: signs every request, verifies every successful response,
maps error bodies to :class:`WechatPayApiError` and retries only what is retryable
(network errors, timeouts, 5xx / SYSTEM_ERROR, 429 FREQUENCY_LIMITED) with exponential
backoff and jitter, bounded in attempts and in total time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal, Protocol
from urllib.parse import quote, urlsplit

import aiohttp
import structlog
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from multidict import CIMultiDict
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential_jitter,
)
from yarl import URL

from paylane_common.wechatpay.aead import decrypt_resource
from paylane_common.wechatpay.bills import (
    BillFile,
    FundFlowBill,
    TradeBill,
    bill_date,
    bill_text,
    parse_fund_flow_bill,
    parse_trade_bill,
)
from paylane_common.wechatpay.exceptions import (
    ResponseVerificationError,
    VerificationError,
    WechatPayApiError,
    WechatPayError,
    WechatPayUnavailable,
)
from paylane_common.wechatpay.keys import VerifierKeys, read_certificate
from paylane_common.wechatpay.merchant import MerchantSigner
from paylane_common.wechatpay.privacy import encrypt_field
from paylane_common.wechatpay.signature import (
    HEADER_SERIAL,
    NotificationHeaders,
    NotificationVerifier,
)

log = structlog.get_logger(__name__)

TRADE_TYPES = {"JSAPI": "jsapi", "NATIVE": "native", "H5": "h5", "APP": "app"}

#: Where an ABNORMAL refund's money goes instead: the payer's bank card, or the merchant's.
AbnormalRefundType = Literal["USER_BANK_CARD", "MERCHANT_BANK_CARD"]
ABNORMAL_REFUND_TYPES: tuple[AbnormalRefundType, ...] = ("USER_BANK_CARD", "MERCHANT_BANK_CARD")


@dataclass(frozen=True)
class PlatformCertificate:
    serial: str
    public_key: RSAPublicKey
    not_after: datetime
    not_before: datetime | None = None


class KeyRefresh(Protocol):
    """What the client needs of a certificate refresher (:class:`CertificateRefresher`)."""

    async def refresh_now(self) -> bool:
        """Download the certificates now unless done very recently; True if it did."""
        ...


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, WechatPayApiError):
        return exc.retryable
    return isinstance(exc, WechatPayUnavailable)


class WechatPayClient:
    def __init__(
        self,
        *,
        base_url: str,
        mchid: str,
        signer: MerchantSigner,
        verifier: NotificationVerifier,
        session: aiohttp.ClientSession,
        max_attempts: int = 4,
        max_elapsed_s: float = 10.0,
        request_timeout_s: float = 5.0,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 2.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.mchid = mchid
        self._signer = signer
        self._verifier = verifier
        self._session = session
        self._max_attempts = max_attempts
        self._max_elapsed_s = max_elapsed_s
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self._backoff = (backoff_initial_s, backoff_max_s)
        #: Set by a :class:`CertificateRefresher`: an answer under an unknown serial then
        #: triggers one immediate (rate-limited) download and a second verification.
        self.key_refresh: KeyRefresh | None = None

    @property
    def verifier(self) -> NotificationVerifier:
        """What checks WeChat Pay's signatures (its answers, and notifications)."""
        return self._verifier

    # -- the API -------------------------------------------------------------------------

    async def place(self, trade_type: str, payload: dict[str, Any]) -> dict[str, Any]:
        """``POST /v3/pay/transactions/{jsapi|native|h5|app}`` → prepay_id / code_url / h5_url."""
        kind = TRADE_TYPES[trade_type]
        return await self._json("POST", f"/v3/pay/transactions/{kind}", payload)

    async def query_by_out_trade_no(self, out_trade_no: str) -> dict[str, Any]:
        path = f"/v3/pay/transactions/out-trade-no/{quote(out_trade_no, safe='')}"
        return await self._json("GET", f"{path}?mchid={self.mchid}")

    async def query_by_transaction_id(self, transaction_id: str) -> dict[str, Any]:
        path = f"/v3/pay/transactions/id/{quote(transaction_id, safe='')}"
        return await self._json("GET", f"{path}?mchid={self.mchid}")

    async def close(self, out_trade_no: str) -> None:
        path = f"/v3/pay/transactions/out-trade-no/{quote(out_trade_no, safe='')}/close"
        await self._call("POST", path, {"mchid": self.mchid})

    async def create_refund(self, payload: dict[str, Any]) -> dict[str, Any]:
        return await self._json("POST", "/v3/refund/domestic/refunds", payload)

    async def query_refund(self, out_refund_no: str) -> dict[str, Any]:
        return await self._json(
            "GET", f"/v3/refund/domestic/refunds/{quote(out_refund_no, safe='')}"
        )

    async def apply_abnormal_refund(
        self,
        refund_id: str,
        out_refund_no: str,
        remedy: AbnormalRefundType,
        *,
        bank_type: str | None = None,
        bank_account: str | None = None,
        real_name: str | None = None,
    ) -> dict[str, Any]:
        """``POST /v3/refund/domestic/refunds/{refund_id}/apply-abnormal-refund``: send an
        ABNORMAL refund to a bank card instead; answers the refund (``PROCESSING``).
        ``remedy`` is WeChat Pay's ``type``.

        ``USER_BANK_CARD`` needs the payer's ``bank_type`` (WeChat Pay's bank code, sent as
        it is), ``bank_account`` and ``real_name``; those two go RSA-OAEP-encrypted under
        WeChat Pay's key, whose id or serial the request names in ``Wechatpay-Serial``.
        ``MERCHANT_BANK_CARD`` (the merchant's own account) needs none of them."""
        if remedy not in ABNORMAL_REFUND_TYPES:
            raise ValueError(f"remedy must be one of {ABNORMAL_REFUND_TYPES}")
        payload: dict[str, Any] = {"out_refund_no": out_refund_no, "type": remedy}
        headers: dict[str, str] = {}
        if remedy == "USER_BANK_CARD":
            if not (bank_type and bank_account and real_name):
                raise ValueError("USER_BANK_CARD needs bank_type, bank_account and real_name")
            serial, key = self._verifier.keys.encryption_key(at=time.time())
            payload["bank_type"] = bank_type
            payload["bank_account"] = encrypt_field(key, bank_account)
            payload["real_name"] = encrypt_field(key, real_name)
            headers["Wechatpay-Serial"] = serial
        path = f"/v3/refund/domestic/refunds/{quote(refund_id, safe='')}/apply-abnormal-refund"
        return _json_body(await self._call("POST", path, payload, headers))

    async def download_certificates(self, apiv3_key: str | bytes) -> list[PlatformCertificate]:
        """``GET /v3/certificates``, each certificate decrypted with the APIv3 key.

        The response is verified with a key already known or, on first download, with
        the certificates it carries (as WeChat's SDKs bootstrap)."""
        body, headers = await self._send("GET", "/v3/certificates", None, verify=False)
        data = _json_body(body)
        certificates = []
        for item in data.get("data", []):
            enc = item["encrypt_certificate"]
            pem = decrypt_resource(
                apiv3_key, enc["nonce"], enc.get("associated_data"), enc["ciphertext"]
            )
            info = read_certificate(pem)
            certificates.append(
                PlatformCertificate(info.serial, info.public_key, info.not_after, info.not_before)
            )
        bootstrap = VerifierKeys()
        for cert in certificates:
            bootstrap.add_certificate(
                cert.serial, cert.public_key, not_before=cert.not_before, not_after=cert.not_after
            )
        known = self._verifier.keys
        serial = headers.get("Wechatpay-Serial", "")
        chosen = known if known.get(serial, at=time.time()) else bootstrap
        NotificationVerifier(chosen, max_skew_s=self._verifier.max_skew_s).verify(
            NotificationHeaders.from_mapping(headers), body
        )
        return certificates

    # -- bills -----------------------------------------------------------------------------

    async def apply_trade_bill(self, day: date, bill_type: str = "ALL") -> BillFile:
        """``GET /v3/bill/tradebill``: where the day's (China time) trade bill is, gzipped."""
        query = f"bill_date={bill_date(day)}&bill_type={bill_type}&tar_type=GZIP"
        return _bill_file(await self._json("GET", f"/v3/bill/tradebill?{query}"))

    async def apply_fund_flow_bill(self, day: date, account_type: str = "BASIC") -> BillFile:
        """``GET /v3/bill/fundflowbill``: where the day's fund-flow bill is, gzipped."""
        query = f"bill_date={bill_date(day)}&account_type={account_type}&tar_type=GZIP"
        return _bill_file(await self._json("GET", f"/v3/bill/fundflowbill?{query}"))

    async def download_bill(self, bill: BillFile) -> str:
        """The bill's text: a signed GET of ``download_url``, whose answer WeChat Pay does
        not sign (as the official SDKs, no verification), checked by its digest instead.

        Only the URL's path and query are used, against this client's base URL: the
        merchant's signature never goes to a host paylane was not configured with."""
        url = urlsplit(bill.download_url)
        path = url.path + (f"?{url.query}" if url.query else "")
        if not path.startswith("/v3/"):
            raise WechatPayError("download_url is not a WeChat Pay API path")
        raw = await self._call("GET", path, None, verify=False)
        return bill_text(raw, bill, gzipped=True)

    async def trade_bill(self, day: date) -> TradeBill:
        """The day's trade bill (ALL), applied for, downloaded, checked and parsed; a day
        WeChat Pay has no bill of (NO_STATEMENT_EXIST) is an empty bill marked
        ``no_statement``: nothing to compare, which is not the same as nothing paid."""
        try:
            bill = await self.apply_trade_bill(day)
        except WechatPayApiError as exc:
            if exc.code == "NO_STATEMENT_EXIST":
                return TradeBill.empty()
            raise
        return parse_trade_bill(await self.download_bill(bill))

    async def fund_flow_bill(self, day: date) -> FundFlowBill:
        """The day's fund-flow bill of the basic account, applied for, downloaded, parsed."""
        return parse_fund_flow_bill(await self.download_bill(await self.apply_fund_flow_bill(day)))

    # -- plumbing -------------------------------------------------------------------------

    async def _json(self, method: str, path: str, payload: Any = None) -> dict[str, Any]:
        return _json_body(await self._call(method, path, payload))

    async def _call(
        self,
        method: str,
        path: str,
        payload: Any,
        headers: Mapping[str, str] | None = None,
        *,
        verify: bool = True,
    ) -> bytes:
        async for attempt in self._retrying():
            with attempt:
                number = attempt.retry_state.attempt_number
                if number > 1:
                    log.info("wechatpay_retry", method=method, path=path, attempt=number)
                body, _headers = await self._send(
                    method, path, payload, verify=verify, headers=headers
                )
        return body

    def _retrying(self) -> AsyncRetrying:
        """The one retry policy of a call to WeChat Pay (this client and Cloud Hosting's):
        what is retryable, within ``max_attempts`` and ``max_elapsed_s``, backing off with
        jitter."""
        return AsyncRetrying(
            stop=stop_after_attempt(self._max_attempts) | stop_before_delay(self._max_elapsed_s),
            wait=wait_exponential_jitter(
                multiplier=self._backoff[0], max=self._backoff[1], jitter=self._backoff[0]
            ),
            retry=retry_if_exception(_retryable),
            reraise=True,
        )

    async def _send(
        self,
        method: str,
        path: str,
        payload: Any,
        *,
        verify: bool,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """One signed request (the caller's ``headers`` under the client's own: see
        :func:`_request_headers`); returns the raw body and headers of a 2xx answer."""
        body = b"" if payload is None else json.dumps(payload, ensure_ascii=False).encode()
        authorization = self._signer.authorization(method, path, body)
        sent = _request_headers(headers or {}, authorization, json_body=payload is not None)
        # WeChat signs its answer with the key the request names (during the migration to
        # the public key it defaults to the platform certificate): name the one we hold,
        # unless the call names one itself (the key its encrypted fields are under).
        if HEADER_SERIAL not in sent:
            serial = self._verifier.keys.request_serial(time.time())
            if serial is not None:
                sent[HEADER_SERIAL] = serial
        try:
            async with self._session.request(
                method,
                # Sent exactly as signed: aiohttp must not re-encode the path (e.g. %2A → *).
                URL(self.base_url + path, encoded=True),
                data=body if payload is not None else None,
                headers=sent,
                timeout=self._timeout,
            ) as response:
                raw = await response.read()
                status = response.status
                answer = {k: v for k, v in response.headers.items()}
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise WechatPayUnavailable(f"{method} {path}: {type(exc).__name__}") from None
        request_id = _header(answer, "Request-ID")
        if status >= 300:
            error = _api_error(status, raw, request_id)
            log.info(
                "wechatpay_api_error",
                method=method,
                path=path,
                status=status,
                code=error.code,
                request_id=request_id,
            )
            raise error
        if verify:
            await self._verify_answer(method, path, answer, raw, request_id)
        return raw, answer

    async def _verify_answer(
        self, method: str, path: str, headers: dict[str, str], raw: bytes, request_id: str | None
    ) -> None:
        try:
            parsed = NotificationHeaders.from_mapping(headers)
            try:
                self._verifier.verify(parsed, raw)
            except VerificationError as exc:
                if exc.reason != "unknown_serial" or self.key_refresh is None:
                    raise
                # A new platform certificate: fetch it now rather than at the next refresh.
                log.info("wechatpay_unknown_serial_refresh", serial=parsed.serial[:64])
                await self.key_refresh.refresh_now()  # or a download moments ago did
                self._verifier.verify(parsed, raw)
        except VerificationError as exc:
            log.warning(
                "wechatpay_answer_unverified",
                method=method,
                path=path,
                reason=exc.reason,
                request_id=request_id,
            )
            raise ResponseVerificationError(
                f"response to {method} {path} failed verification: {exc.reason}",
                exc.reason,
                request_id,
            ) from None


def _request_headers(
    caller: Mapping[str, str], authorization: str, *, json_body: bool
) -> CIMultiDict[str]:
    """The headers of a request: the caller's, compared case-insensitively, under the
    client's own. ``Authorization``, ``Accept`` and ``Content-Type`` (only with a body)
    replace any the caller gave, whatever its case; a caller's ``Wechatpay-Serial`` is
    kept, once: two that disagree would leave WeChat to pick the key an encrypted field
    is under."""
    sent = CIMultiDict(caller)
    serials = set(sent.popall(HEADER_SERIAL, []))
    if len(serials) > 1:
        raise ValueError(f"two different {HEADER_SERIAL} headers")
    if serials:
        sent[HEADER_SERIAL] = serials.pop()
    sent.setdefault("User-Agent", "paylane/0.1 (+wechatpay-apiv3)")
    sent["Authorization"] = authorization
    sent["Accept"] = "application/json"
    if json_body:
        sent["Content-Type"] = "application/json"
    else:
        sent.popall("Content-Type", None)
    return sent


def _header(headers: dict[str, str], name: str) -> str | None:
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)


def _json_body(raw: bytes) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise WechatPayError("WeChat Pay answered with a body that is not JSON") from None
    if not isinstance(data, dict):
        raise WechatPayError("WeChat Pay answered with a JSON body that is not an object")
    return data


def _bill_file(data: dict[str, Any]) -> BillFile:
    try:
        return BillFile(
            download_url=str(data["download_url"]),
            hash_type=str(data.get("hash_type") or "SHA1"),
            hash_value=str(data["hash_value"]),
        )
    except KeyError as exc:
        raise WechatPayError(f"the bill answer has no {exc.args[0]}") from None


def _api_error(status: int, raw: bytes, request_id: str | None) -> WechatPayApiError:
    try:
        data = json.loads(raw) if raw else {}
    except (ValueError, RecursionError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    return WechatPayApiError(
        status,
        str(data.get("code") or f"HTTP_{status}"),
        str(data.get("message") or raw[:200].decode(errors="replace")),
        data.get("detail"),
        request_id,
    )
