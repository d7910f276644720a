"""Injected API failures (``/sandbox/faults``): the next N matching calls fail or stall."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import ApiError

DEFAULT_MESSAGES = {
    "SYSTEM_ERROR": "系统异常，请稍后重试",
    "FREQUENCY_LIMITED": "频率超限",
    "PARAM_ERROR": "参数错误",
    "INVALID_REQUEST": "无效请求",
    "NOT_ENOUGH": "余额不足",
    "NO_AUTH": "商户无权限",
    "TRADE_ERROR": "交易错误",
}


class FaultSpec(BaseModel):
    """Body of ``POST /sandbox/faults``. ``status`` absent with ``delay_s``: slow, not failing."""

    model_config = ConfigDict(extra="forbid")

    path_prefix: str = Field("/v3/", min_length=1)
    method: str | None = None
    count: int = Field(1, ge=1)
    status: int | None = Field(None, ge=400, le=599)
    code: str | None = None
    message: str | None = None
    delay_s: float = Field(0.0, ge=0, le=600)

    @model_validator(mode="after")
    def _something_happens(self) -> FaultSpec:
        if self.status is None and self.delay_s == 0:
            raise ValueError("give a status (an error to answer) or delay_s (a slow answer)")
        if self.status is not None and not self.code:
            self.code = "SYSTEM_ERROR" if self.status >= 500 else "INVALID_REQUEST"
        if self.method is not None:
            self.method = self.method.upper()
        return self


@dataclass
class Fault:
    id: int
    spec: FaultSpec
    remaining: int
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        return (
            self.remaining > 0
            and path.startswith(self.spec.path_prefix)
            and (self.spec.method is None or self.spec.method == method.upper())
        )

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, **self.spec.model_dump(), "remaining": self.remaining}


class FaultInjector:
    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._next_id = 1

    def add(self, spec: FaultSpec) -> Fault:
        fault = Fault(self._next_id, spec, spec.count)
        self._next_id += 1
        self._faults.append(fault)
        return fault

    def list(self) -> list[Fault]:
        return list(self._faults)

    def clear(self) -> None:
        self._faults.clear()

    async def apply(self, method: str, path: str) -> None:
        """Consume the first matching fault: sleep its delay, then raise its error if any."""
        fault = next((f for f in self._faults if f.matches(method, path)), None)
        if fault is None:
            return
        fault.remaining -= 1
        fault.hits += 1
        if fault.remaining == 0:
            self._faults.remove(fault)
        spec = fault.spec
        if spec.delay_s:
            await asyncio.sleep(spec.delay_s)
        if spec.status is not None and spec.code is not None:
            message = spec.message or DEFAULT_MESSAGES.get(spec.code, "sandbox injected fault")
            raise ApiError(spec.status, spec.code, message)
