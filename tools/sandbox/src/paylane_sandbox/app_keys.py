"""Typed AppKeys of the sandbox app."""

from __future__ import annotations

from aiohttp import web

from .sandbox import Sandbox

SANDBOX = web.AppKey("sandbox", Sandbox)
