"""Yuan and fen, exactly: the shared tables and the bills hold yuan (``DECIMAL(10,2)``,
``"12.34"``), WeChat Pay's API and paylane's events count fen. Never a float between them."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

#: One fen, in yuan: the exponent every yuan amount is written with.
FEN = Decimal("0.01")


def yuan(fen: int) -> Decimal:
    """``990`` → ``Decimal("9.90")``: what is written to ``amount``, ``refund_amount``…"""
    return Decimal(int(fen)).scaleb(-2).quantize(FEN)


def yuan_text(fen: int) -> str:
    """``1234`` → ``"12.34"``: yuan as the bills and the reports write them."""
    return f"{yuan(fen):f}"


def fen(yuan: Decimal | str) -> int:
    """``"12.34"`` (or its Decimal) → 1234, exactly; ValueError for what is not an amount
    or not whole fen (a fraction of a fen is never rounded)."""
    try:
        value = Decimal(yuan) * 100
    except InvalidOperation:
        raise ValueError(f"not an amount: {yuan!r}") from None
    if not value.is_finite() or value != value.to_integral_value():
        raise ValueError(f"amount {yuan!r} is not whole fen")
    return int(value)
