"""Runtime switches of the sandbox, changed through ``GET|PUT /sandbox/switches``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .settings import RefundMode, SandboxSettings, SignMode


class Switches(BaseModel):
    """What the next notifications (and signatures) look like. All fields optional in PUT."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Swallow the next N notifications entirely ("callback missed"). Counts down.
    drop_next: int = Field(0, ge=0)
    #: Send N extra copies of each notification, ``duplicate_gap_s`` apart.
    duplicate: int = Field(0, ge=0, le=20)
    duplicate_gap_s: float = Field(1.0, ge=0, le=3600)
    #: Send each notification's first delivery twice at once (WeChat's 2nd network path).
    concurrent_duplicate: bool = False
    #: Wait this long before a notification's first delivery.
    delay_s: float = Field(0.0, ge=0, le=3600)
    #: Hold notifications; release them in reverse order at 2 held or on flush.
    reorder: bool = False
    sign_mode: SignMode = "public_key"
    refund_mode: RefundMode = "auto"


class SwitchBoard:
    """The current switches; one per app."""

    def __init__(self, settings: SandboxSettings) -> None:
        self._defaults = Switches(
            sign_mode=settings.sandbox_sign_mode, refund_mode=settings.sandbox_refund_mode
        )
        self.current = self._defaults

    def update(self, patch: dict[str, Any]) -> Switches:
        """Apply a partial update (pydantic ValidationError when invalid; nothing changes)."""
        self.current = Switches.model_validate({**self.current.model_dump(), **patch})
        return self.current

    def take_drop(self) -> bool:
        """True (and one fewer to drop) when the next notification is to be swallowed."""
        if self.current.drop_next <= 0:
            return False
        self.current = self.current.model_copy(update={"drop_next": self.current.drop_next - 1})
        return True

    def sign_mode(self) -> SignMode:
        return self.current.sign_mode

    def reset(self) -> None:
        self.current = self._defaults
