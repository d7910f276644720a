"""``WEBHOOK_*``: the order service's webhooks to the backend (docs/webhooks.md)."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings

from paylane_common.runtime.settings import NoneIfBlank

from . import signing, ssrf

#: WeChat Pay's own resend schedule (15 steps, about 24 hours), the default one.
WECHAT_SCHEDULE_S = "15,15,30,180,600,1200,1800,1800,1800,3600,10800,10800,10800,21600,21600"


class WebhookSettings(BaseSettings):
    """Mixin of the order service: where events go as Standard Webhooks, and how hard
    paylane tries."""

    #: Endpoints every webhook event is sent to, comma-separated (more, each with its own
    #: events and secret, through ``POST /webhooks/endpoints``). ``https://`` (``http://``
    #: only with ``WEBHOOK_ALLOW_PRIVATE=true``). Empty: none from the configuration.
    webhook_urls: str = ""
    #: The secret(s) ``WEBHOOK_URLS`` are signed with: ``whsec_`` and base64 (at least 16
    #: bytes). Several, space- or comma-separated, while rotating: each signs, and the
    #: ``webhook-signature`` header carries all the signatures. Required with
    #: ``WEBHOOK_URLS``.
    webhook_secret: NoneIfBlank[SecretStr] = None
    #: Development only: allow webhook targets on private, loopback and link-local
    #: addresses, and plain ``http://`` URLs. Otherwise such a target is refused when an
    #: endpoint is made (400) and again at every send (DNS rebinding).
    webhook_allow_private: bool = False
    #: An endpoint that has answered nothing but failures for this long (counted from its
    #: first failure since its last success) is disabled, with an alert
    #: (``PaylaneWebhookEndpointDisabled``).
    webhook_disable_after_s: int = Field(432_000, ge=60)
    #: Seconds between a delivery's attempts, comma-separated: after the last one fails,
    #: the delivery is ``failed`` (``paylane webhooks recover`` sends it again). Default:
    #: WeChat Pay's own 15 steps, about 24 hours. A ``Retry-After`` in a failed answer is
    #: taken instead of the step (at most a day).
    webhook_retry_schedule_s: str = WECHAT_SCHEDULE_S
    #: Each step is stretched or shrunk by up to this fraction at random, so that the
    #: retries of many deliveries do not arrive together.
    webhook_retry_jitter: float = Field(0.1, ge=0, le=0.5)
    #: The most one attempt waits for its answer.
    webhook_timeout_s: float = Field(15.0, gt=0, le=60)
    #: Deliveries sent to one endpoint at a time by one replica; a slow endpoint holds
    #: only its own.
    webhook_endpoint_concurrency: int = Field(4, ge=1, le=100)
    #: How often each replica looks for due deliveries (besides being woken by a new
    #: one). 0: this replica sends nothing (it still records deliveries).
    webhook_poll_s: float = Field(1.0, ge=0, le=60)

    @field_validator("webhook_retry_schedule_s")
    @classmethod
    def _schedule(cls, value: str) -> str:
        retry_schedule(value)
        return value

    @model_validator(mode="after")
    def _urls_and_secret(self) -> WebhookSettings:
        urls = self.configured_urls()
        for url in urls:
            try:
                ssrf.check_url(url, allow_private=self.webhook_allow_private)
            except ssrf.TargetRefused as exc:
                raise ValueError(f"WEBHOOK_URLS: {url!r} {exc}") from None
        if urls and self.webhook_secret is None:
            raise ValueError("WEBHOOK_URLS needs WEBHOOK_SECRET (whsec_…)")
        if self.webhook_secret is not None:
            try:
                signing.parse_secrets(self.webhook_secret.get_secret_value())
            except ValueError as exc:
                raise ValueError(f"WEBHOOK_SECRET: {exc}") from None
        return self

    def configured_urls(self) -> tuple[str, ...]:
        return tuple(u.strip() for u in self.webhook_urls.split(",") if u.strip())

    def configured_secrets(self) -> tuple[str, ...]:
        if self.webhook_secret is None:
            return ()
        return signing.parse_secrets(self.webhook_secret.get_secret_value())


def retry_schedule(text: str) -> tuple[float, ...]:
    """``"15,15,30"`` as seconds; ValueError unless one or more numbers > 0."""
    try:
        steps = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ValueError("seconds, comma-separated (e.g. 15,30,60)") from None
    if not steps or any(s <= 0 for s in steps):
        raise ValueError("one or more steps, each more than 0 seconds")
    return steps
