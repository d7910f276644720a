"""paylane's local WeChat Pay APIv3 emulator (``paylane serve sandbox``)."""
