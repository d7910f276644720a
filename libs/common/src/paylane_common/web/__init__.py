"""HTTP: callers' auth, the route tables and OpenAPI, listeners' timeouts, health
endpoints."""
