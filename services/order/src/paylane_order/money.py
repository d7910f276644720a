"""Yuan and fen, exactly: the shared tables hold yuan (``DECIMAL(10,2)``), WeChat Pay and
paylane's events count fen. Never a float between them."""

from __future__ import annotations

from decimal import Decimal


def yuan(fen: int) -> Decimal:
    """``990`` → ``Decimal("9.90")``: what is written to ``amount``, ``refund_amount``…"""
    return Decimal(int(fen)).scaleb(-2).quantize(Decimal("0.01"))
