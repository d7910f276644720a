"""A service's HTTP API as one explicit table, from which both the routes it serves and
its OpenAPI 3.1 document are made, so the document cannot drift from what is served.

Each :class:`Operation` names its handler, the pydantic model its JSON body is validated
with (:meth:`Api.body_model`: the handlers parse with the model the table names, never
one of their own, through :func:`validate_json`, which refuses a key given twice), the
models of its answers by status, and who may call it. The
document's schemas are pydantic's (``models_json_schema``), bodies in validation mode,
answers in serialization mode, under ``#/components/schemas``.

Why not a framework (aiohttp-pydantic and the like): they want handlers rewritten as
their views and hold the table implicitly; a table of thirty lines keeps the handlers as
they are and the document readable in review. The documents are committed in
``docs/openapi/`` (``make openapi``) and served at ``/openapi.json``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from pydantic_core import InitErrorDetails, PydanticCustomError

OPENAPI_VERSION = "3.1.0"
DOCUMENT_PATH = "/openapi.json"
_REF_TEMPLATE = "#/components/schemas/{model}"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: :attr:`Operation.security` of an operation anyone may call.
PUBLIC: tuple[str, ...] = ()
#: (model, mode) → the ``$ref`` of its schema.
_Refs = Mapping[tuple[Any, JsonSchemaMode], Any]


@dataclass(frozen=True)
class Reply:
    """One documented answer: a JSON body of ``model`` (none without one), or a body of
    another ``media_type`` described by ``schema``."""

    description: str
    model: type[BaseModel] | None = None
    media_type: str = "application/json"
    schema: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Param:
    """A path, query or header parameter; ``schema`` is its JSON Schema."""

    name: str
    location: Literal["path", "query", "header"]
    description: str
    schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "in": self.location,
            "description": self.description,
            "required": self.required or self.location == "path",
            "schema": dict(self.schema),
        }


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    handler: Handler
    summary: str
    responses: Mapping[int, Reply]
    #: The model the JSON body is validated with (:meth:`Api.body_model`).
    body: type[BaseModel] | None = None
    #: Instead of ``body``: the JSON Schema of a body the handler checks itself (a
    #: signed WeChat Pay notification, verified before it is parsed).
    body_schema: Mapping[str, Any] | None = None
    #: Names of :attr:`Api.security_schemes`, any one of which is enough; :data:`PUBLIC`
    #: for none. Every operation declares it: :meth:`Api.add_routes` refuses one that
    #: does not (None), so a route is never open by omission.
    security: tuple[str, ...] | None = None
    #: What the operation does, in the words of a refusal ("refunding" is for the app
    #: backend only): for the service that enforces :attr:`security`; not in the document.
    action: str = ""
    parameters: tuple[Param, ...] = ()
    description: str = ""
    #: ``x-…`` extensions (what OpenAPI cannot say, e.g. a WebSocket's messages).
    extensions: Mapping[str, Any] = field(default_factory=dict)
    #: The document's ``operationId``; default: the handler's name. Needed where one
    #: handler serves two paths (an alias), since operation ids are unique.
    operation_id: str = ""

    def path_params(self) -> tuple[Param, ...]:
        """The ``{name}`` parts of the path, declared here unless ``parameters`` has them."""
        declared = {p.name for p in self.parameters}
        names = [part[1:-1] for part in self.path.split("/") if part.startswith("{")]
        implied = tuple(
            Param(name, "path", f"the `{name}` of the resource", {"type": "string", "minLength": 1})
            for name in names
            if name not in declared
        )
        return implied + self.parameters


@dataclass(frozen=True)
class Api:
    title: str
    version: str
    description: str
    operations: Sequence[Operation]
    security_schemes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: Models described in the document though no operation names them (e.g. messages
    #: a WebSocket sends, named by an ``x-`` extension).
    extra_models: Sequence[type[BaseModel]] = ()

    def add_routes(self, app: web.Application) -> None:
        """Serve every operation, and the document at ``/openapi.json``; the table is
        ``app[API]`` for :func:`body_model`. An operation that does not declare its
        :attr:`~Operation.security`, or names a scheme the table lacks, is a startup error."""
        self.check_security()
        app[API] = self
        for op in self.operations:
            app.router.add_route(op.method, op.path, op.handler)
        text = json.dumps(self.document(), ensure_ascii=False)

        async def document(request: web.Request) -> web.Response:
            return web.Response(text=text, content_type="application/json")

        app.router.add_get(DOCUMENT_PATH, document)

    def check_security(self) -> None:
        """ValueError unless every operation declares who may call it, with known schemes."""
        undeclared = [f"{op.method} {op.path}" for op in self.operations if op.security is None]
        if undeclared:
            raise ValueError(
                f"{self.title}: no security declared (PUBLIC for none): {', '.join(undeclared)}"
            )
        unknown = {
            name
            for op in self.operations
            for name in op.security or ()
            if name not in self.security_schemes
        }
        if unknown:
            raise ValueError(f"{self.title}: unknown security schemes {sorted(unknown)}")

    def operation(self, request: web.Request) -> Operation:
        """The operation ``request`` was routed to."""
        resource = request.match_info.route.resource
        path = resource.canonical if resource is not None else request.path
        for op in self.operations:
            if op.path == path and op.method == request.method:
                return op
        raise LookupError(f"{request.method} {path} is not an operation of {self.title}")

    def body_model(self, request: web.Request) -> type[BaseModel]:
        """The model the table says ``request``'s body is validated with."""
        model = self.operation(request).body
        if model is None:
            raise LookupError(f"{request.method} {request.path} takes no body")
        return model

    def document(self) -> dict[str, Any]:
        """The OpenAPI 3.1 document, deterministic (the committed file is compared)."""
        keys, schemas = self._schemas()
        paths: dict[str, dict[str, Any]] = {}
        for op in self.operations:
            paths.setdefault(op.path, {})[op.method.lower()] = self._operation(op, keys)
        components: dict[str, Any] = {"schemas": schemas}
        if self.security_schemes:
            components["securitySchemes"] = {k: dict(v) for k, v in self.security_schemes.items()}
        return {
            "openapi": OPENAPI_VERSION,
            "info": {"title": self.title, "version": self.version, "description": self.description},
            "paths": paths,
            "components": components,
        }

    def _schemas(self) -> tuple[_Refs, Any]:
        wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = []
        for op in self.operations:
            if op.body is not None:
                wanted.append((op.body, "validation"))
            wanted += [(r.model, "serialization") for r in op.responses.values() if r.model]
        wanted += [(model, "serialization") for model in self.extra_models]
        keys, top = models_json_schema(list(dict.fromkeys(wanted)), ref_template=_REF_TEMPLATE)
        return keys, dict(sorted(top.get("$defs", {}).items()))

    def _operation(self, op: Operation, keys: _Refs) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "operationId": op.operation_id or op.handler.__name__,
            "summary": op.summary,
        }
        if op.description:
            entry["description"] = op.description
        params = op.path_params()
        if params:
            entry["parameters"] = [p.as_dict() for p in params]
        body = keys[(op.body, "validation")] if op.body is not None else op.body_schema
        if body is not None:
            entry["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": dict(body)}},
            }
        entry["responses"] = {
            str(status): _reply(reply, keys) for status, reply in sorted(op.responses.items())
        }
        entry["security"] = [{name: []} for name in op.security or PUBLIC]
        entry.update(op.extensions)
        return entry


API = web.AppKey("openapi", Api)


def body_model(request: web.Request) -> type[BaseModel]:
    """The model the app's table says ``request``'s JSON body is validated with."""
    return request.app[API].body_model(request)


M = TypeVar("M", bound=BaseModel)


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise _DuplicateKey(key)
        found[key] = value
    return found


def duplicate_key(raw: bytes | str) -> str | None:
    """The first key given twice in one object of the JSON text ``raw`` (None: none, or
    not JSON at all, which the model's validation then reports)."""
    try:
        json.loads(raw, object_pairs_hook=_refuse_duplicates)
    except _DuplicateKey as exc:
        return exc.key
    except ValueError:
        return None
    return None


def validate_json(model: type[M], raw: bytes | str) -> M:
    """``raw`` validated with ``model``, as ``model_validate_json`` does, except that a key
    given twice in one object is refused (a ``ValidationError`` of type
    ``duplicate_key``). A JSON parser keeps the last of them (``{"amount": 1, "amount":
    2990}`` is 2990), another program reading the same body perhaps the first: a body two
    readers understand differently is not taken, least of all on a money route."""
    key = duplicate_key(raw)
    if key is not None:
        error = PydanticCustomError(
            "duplicate_key", "given more than once in one object (a key may appear once)"
        )
        details = InitErrorDetails(type=error, loc=(key,), input=key)
        raise ValidationError.from_exception_data(model.__name__, [details])
    return model.model_validate_json(raw)


def _reply(reply: Reply, keys: _Refs) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": reply.description}
    if reply.headers:
        answer["headers"] = {
            name: {"description": text, "schema": {"type": "string"}}
            for name, text in reply.headers.items()
        }
    schema = keys[(reply.model, "serialization")] if reply.model else reply.schema
    if schema is not None:
        answer["content"] = {reply.media_type: {"schema": dict(schema)}}
    return answer


def render(api: Api) -> str:
    """The document as committed in ``docs/openapi/``: indented, a final newline."""
    return json.dumps(api.document(), indent=2, ensure_ascii=False) + "\n"
