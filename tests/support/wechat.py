"""Plays WeChat Pay for the processes of a test stack: the kit's made-up merchant account
(paylane_common.wechatpay.testing) and the environment each process needs to share it."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp

from paylane_common.wechatpay import NotificationVerifier, WechatPayClient
from paylane_common.wechatpay.testing import FakeWechatPay

#: The mobile app's appid, a second appid of the merchant: APP orders are placed under it.
APP_APPID = "wx8888888888888888"

#: WeChat's retry schedule at 1/100 (15 s → 150 ms); refunds completed by the tests.
SANDBOX_PACE = {"SANDBOX_TIME_FACTOR": "0.01", "SANDBOX_REFUND_MODE": "manual"}


@dataclass(frozen=True)
class FakeWechat(FakeWechatPay):
    def sandbox_env(self) -> dict[str, str]:
        """What ``paylane serve sandbox`` needs to play this WeChat Pay at the tests' pace
        (also the settings of a sandbox run in process: ``sandbox.sandbox_settings``)."""
        return {
            "WECHATPAY_MCHID": self.mchid,
            "WECHATPAY_APPID": self.appid,
            # The appids bound to the merchant: others get APPID_MCHID_NOT_MATCH.
            "SANDBOX_APPIDS": f"{self.appid},{APP_APPID}",
            "WECHATPAY_APIV3_KEY": self.apiv3_key,
            "WECHATPAY_PUBLIC_KEY_ID": self.public_key_id,
            "WECHATPAY_MERCHANT_SERIAL_NO": self.merchant_serial_no,
            "WECHATPAY_MERCHANT_PRIVATE_KEY": self.merchant_private_key_pem,
            "SANDBOX_PLATFORM_PRIVATE_KEY": self.platform_private_key_pem,
            **SANDBOX_PACE,
        }

    def merchant_env(self, api_base: str, notify_url: str) -> dict[str, str]:
        """What the order service needs to call this WeChat Pay."""
        return {
            "WECHATPAY_API_BASE": api_base,
            "WECHATPAY_NOTIFY_URL": notify_url,
            "WECHATPAY_MERCHANT_PRIVATE_KEY": self.merchant_private_key_pem,
            "WECHATPAY_MERCHANT_SERIAL_NO": self.merchant_serial_no,
        }

    def merchant_client(self, base_url: str, session: aiohttp.ClientSession) -> WechatPayClient:
        """The merchant's API client to this WeChat Pay at ``base_url`` (a sandbox), verifying
        its answers with the public key."""
        return WechatPayClient(
            base_url=base_url,
            mchid=self.mchid,
            signer=self.merchant_signer(),
            verifier=NotificationVerifier(self.verifier_keys()),
            session=session,
        )

    def ingress_env(self) -> dict[str, str]:
        return {
            "WECHATPAY_APIV3_KEY": self.apiv3_key,
            "WECHATPAY_PUBLIC_KEY": self.platform_public_key_pem,
            "WECHATPAY_PUBLIC_KEY_ID": self.public_key_id,
            "WECHATPAY_MCHID": self.mchid,
            "WECHATPAY_APPID": self.appid,
        }


#: The WeChat Pay the tests' events come from: ``tests.support.events`` signs the
#: notification of each payment it builds with these keys, as ingress would pass it on,
#: and the order service's payment gate in the tests verifies with them.
KIT = FakeWechat()
