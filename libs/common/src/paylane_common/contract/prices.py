"""``GET /api/prices/current`` as the existing system answers it (docs/cloud-function.md):
``{"success": true, "data": {"packages": {"basic": 0.01, "premium": 29.90},
"effectiveAt": ISO-8601, "updatedAt": ISO-8601}}``, the prices in yuan as JSON numbers.

The answer is a model (:class:`PriceAnswer`, whose prices are :data:`YuanNumber`) and its
text is :func:`answer_text`: the numbers are written from the catalog's Decimal yuan as
they are (``29.90``, two decimals), and no float ever holds a price on the way out.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from paylane_common.contract.catalog import Package


def iso_utc(moment: datetime) -> str:
    """``2025-11-22T02:53:20.123Z``: UTC to the millisecond, as JavaScript's
    ``toISOString()`` writes it (what the cloud function's callers are used to)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class PriceList:
    """The prices a service answers with: its catalog, since when it is in effect."""

    catalog: Mapping[str, Package]
    #: ``PRICES_EFFECTIVE_AT`` when set, else when the catalog was loaded.
    effective_at: datetime
    updated_at: datetime

    @classmethod
    def of(
        cls,
        catalog: Mapping[str, Package],
        effective_at: datetime | None = None,
        *,
        loaded_at: datetime | None = None,
    ) -> PriceList:
        moment = effective_at or loaded_at or datetime.now(UTC)
        return cls(dict(catalog), moment, moment)

    def reply(self) -> PriceAnswer:
        """The answer; its text is :func:`answer_text`."""
        return PriceAnswer(
            success=True,
            data=PriceData(
                packages={name: p.price_yuan for name, p in self.catalog.items()},
                effectiveAt=self.effective_at,
                updatedAt=self.updated_at,
            ),
        )

    def answer(self) -> dict[str, Any]:
        """:meth:`reply` as a dict, the yuan still Decimals (for :func:`dumps`)."""
        return self.reply().model_dump()


#: Yuan as a JSON number, held as the catalog's Decimal (``29.90``): :func:`answer_text`
#: writes it as it reads. (pydantic's own JSON would write it as a string, and a float
#: would drop the ``0`` of ``29.90``: a model with one is written by ``answer_text``.)
YuanNumber = Annotated[Decimal, WithJsonSchema({"type": "number"})]


class PriceData(BaseModel):
    """The prices in yuan, since when they are in effect (ISO 8601, UTC, milliseconds)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    packages: dict[str, YuanNumber] = Field(description="yuan as JSON numbers (29.90)")
    effectiveAt: datetime
    updatedAt: datetime


class PriceAnswer(BaseModel):
    """``GET /api/prices/current`` as the existing system answers it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    success: Literal[True]
    data: PriceData


def answer_text(answer: BaseModel) -> str:
    """``answer`` (a :class:`PriceAnswer`, or a model extending it) as the JSON text the
    price routes answer: :func:`dumps` of its fields, in their order."""
    return dumps(answer.model_dump())


def dumps(payload: Any) -> str:
    """JSON with every Decimal written as a JSON number exactly as the Decimal reads
    (``Decimal("29.90")`` → ``29.90``), never through a float."""
    marker = f"@dec{secrets.token_hex(8)}@"

    def default(value: Any) -> Any:
        if isinstance(value, Decimal):
            if not value.is_finite():
                raise ValueError(f"{value} is not a JSON number")
            return f"{marker}{value}{marker}"
        if isinstance(value, datetime):
            return iso_utc(value)
        raise TypeError(f"{type(value).__name__} is not JSON serializable")

    text = json.dumps(payload, default=default, ensure_ascii=False)
    # The markers are random per call: no string of the payload can hold one.
    return text.replace(f'"{marker}', "").replace(f'{marker}"', "")
