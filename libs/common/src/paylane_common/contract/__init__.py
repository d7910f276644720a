"""The contract's data: events, the catalog and prices, row ids, client tokens, money and
China time."""
