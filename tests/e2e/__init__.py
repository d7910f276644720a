"""End-to-end tests: the whole stack as processes (a package, so that its stack fixture
ends with it)."""
