"""TLS / mTLS for the gRPC port, and API-key authentication with per-key rate limits.

Only adevents.v1.AdEventService is guarded: grpc.health.v1 (kubelet probes)
and reflection stay open, and HTTP /metrics and /health live on metrics.host,
which can be bound to another interface.

API keys come from a YAML file (a Kubernetes Secret mounted as a file):

    - name: web-sdk            # used in logs and errors; never the key itself
      key: "long random string"
      roles: [ingest, read]     # required; ingest: Send*/Stream*; read: HealthCheck; []: none
      rate_limit_rps: 500       # RPCs per second (default auth.default_rate_limit_rps; 0: none)

`roles` has no default: a key that forgot it would otherwise get more than
meant, so start-up fails naming the entry. Each chunk of StreamAdEvents counts
against the rate limit like one RPC (a stream is not a way around it).

A client sends `x-api-key: <key>` (or `x-api-key-bin`, UTF-8 bytes) or
`authorization: Bearer <key>`. Keys are compared by their SHA-256 digest with
hmac.compare_digest, so neither the lookup nor the comparison depends on how
much of a guess was right.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import grpc
import yaml

from aep.ingest.servicer import RequestRefusedError
from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.settings import AuthSettings, TlsSettings

_SERVICE = pb.DESCRIPTOR.services_by_name["AdEventService"]
AD_EVENT_SERVICE_PREFIX = f"/{_SERVICE.full_name}/"
_READ_METHODS = frozenset({_SERVICE.methods_by_name["HealthCheck"].name})
_STREAM_METHODS = frozenset(method.name for method in _SERVICE.methods if method.client_streaming)
ROLES = frozenset({"ingest", "read"})
_API_KEY_HEADERS = ("x-api-key", "x-api-key-bin")


class SecurityConfigError(Exception):
    """The TLS files or the API key file cannot be used; the message says which and why."""


def server_credentials(settings: TlsSettings) -> grpc.ServerCredentials | None:
    """Credentials for add_secure_port, or None when TLS is off."""
    if settings.cert_file is None and settings.key_file is None:
        if settings.client_ca_file is not None:
            raise SecurityConfigError("tls.client_ca_file needs tls.cert_file and tls.key_file")
        return None
    if settings.cert_file is None or settings.key_file is None:
        raise SecurityConfigError("tls.cert_file and tls.key_file must be set together")
    try:
        certificate = settings.cert_file.read_bytes()
        private_key = settings.key_file.read_bytes()
        client_ca = settings.client_ca_file.read_bytes() if settings.client_ca_file else None
    except OSError as error:
        raise SecurityConfigError(f"tls: cannot read {error.filename}: {error.strerror}") from error
    return grpc.ssl_server_credentials(
        [(private_key, certificate)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


@dataclass
class TokenBucket:
    rate: float
    capacity: float
    tokens: float = 0.0
    updated: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = self.capacity

    def take(self) -> float | None:
        """None when a token was taken, else the seconds until one is available."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return None
        return (1 - self.tokens) / self.rate


@dataclass
class Principal:
    name: str
    roles: frozenset[str]
    bucket: TokenBucket | None


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ApiKeys:
    def __init__(self, principals: dict[bytes, Principal]) -> None:
        self._by_digest = principals

    @classmethod
    def load(cls, path: Path, default_rate_limit_rps: float) -> ApiKeys:
        try:
            entries = yaml.safe_load(path.read_text())
        except OSError as error:
            raise SecurityConfigError(
                f"auth.api_keys_file: cannot read {path}: {error.strerror}"
            ) from error
        except yaml.YAMLError as error:
            raise SecurityConfigError(f"auth.api_keys_file: {path} is not valid YAML") from error
        if not isinstance(entries, list) or not entries:
            raise SecurityConfigError(f"auth.api_keys_file: {path} must be a non-empty list")
        principals: dict[bytes, Principal] = {}
        for position, entry in enumerate(entries):
            where = f"auth.api_keys_file: entry {position}"
            if not isinstance(entry, dict) or not entry.get("name") or not entry.get("key"):
                raise SecurityConfigError(f"{where} needs a name and a key")
            key = str(entry["key"])
            if len(key) < 16:
                raise SecurityConfigError(f"{where} ({entry['name']}): keys need 16+ characters")
            roles = _roles(entry, f"{where} ({entry['name']})")
            rate = float(entry.get("rate_limit_rps", default_rate_limit_rps))
            bucket = TokenBucket(rate, max(1.0, rate)) if rate > 0 else None
            digest = _digest(key)
            if digest in principals:
                raise SecurityConfigError(f"{where}: the same key is listed twice")
            principals[digest] = Principal(str(entry["name"]), roles, bucket)
        return cls(principals)

    def identify(self, presented: str | None) -> Principal | None:
        if not presented:
            return None
        digest = _digest(presented)
        for known, principal in self._by_digest.items():
            if hmac.compare_digest(known, digest):
                return principal
        return None


def _roles(entry: dict[str, Any], where: str) -> frozenset[str]:
    if "roles" not in entry:
        raise SecurityConfigError(
            f"{where} needs `roles`: a list of {sorted(ROLES)} ([] grants nothing)"
        )
    listed = entry["roles"]
    if not isinstance(listed, list) or not all(isinstance(role, str) for role in listed):
        raise SecurityConfigError(f"{where}: `roles` must be a list of {sorted(ROLES)}")
    roles = frozenset(listed)
    if not roles <= ROLES:
        raise SecurityConfigError(f"{where}: unknown roles {sorted(roles - ROLES)}")
    return roles


class KeyEncodingError(Exception):
    """The API key metadata cannot be read as text."""


def _text(key: str, value: str | bytes) -> str:
    if isinstance(value, str):
        return value
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise KeyEncodingError(
            f"metadata {key} is not UTF-8 text; send the API key as x-api-key"
        ) from None


def presented_key(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
    """The key a call carries. Only the API key headers are decoded: other metadata
    (binary `-bin` headers of tracing and the like) is none of our business."""
    for key, value in metadata or ():
        if key in _API_KEY_HEADERS:
            return _text(key, value)
        if key == "authorization":
            text = _text(key, value)
            if text.lower().startswith("bearer "):
                return text[7:].strip()
    return None


def _refusal(method: str, refusal: RequestRefusedError) -> grpc.RpcMethodHandler[Any, Any]:
    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await refusal.abort(context)

    if method in _STREAM_METHODS:
        return grpc.stream_stream_rpc_method_handler(refuse)
    # Stream-unary (the same wire format): refused without waiting for the
    # request, which a client may never finish sending (see aep.server).
    return grpc.stream_unary_rpc_method_handler(refuse)


def _over_limit(principal: Principal, what: str) -> RequestRefusedError | None:
    """The refusal when the key has no token left (RetryInfo: when it will)."""
    bucket = principal.bucket
    if bucket is None:
        return None
    wait = bucket.take()
    if wait is None:
        return None
    return RequestRefusedError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"API key {principal.name!r} is over its rate limit of {bucket.rate:g} "
        f"RPCs (or stream chunks) per second at {what}; retry in {wait:.3f}s",
        retry_after_s=wait,
    )


async def _chunks_within_limit(
    requests: AsyncIterator[Any], principal: Principal
) -> AsyncIterator[Any]:
    """The requests of a stream, each taking a token; the servicer ends the stream
    with the refusal after acknowledging the chunks before it."""
    number = 0
    async for request in requests:
        number += 1
        refusal = _over_limit(principal, f"stream chunk {number}")
        if refusal is not None:
            raise refusal
        yield request


def _rate_limited_stream(
    handler: grpc.RpcMethodHandler[Any, Any], principal: Principal
) -> grpc.RpcMethodHandler[Any, Any]:
    # The stubs type it for the sync API; on grpc.aio it is an async generator.
    behaviour = cast(
        Callable[
            [AsyncIterator[Any], grpc.aio.ServicerContext[Any, Any]], AsyncGenerator[Any, None]
        ],
        handler.stream_stream,
    )

    async def limited(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        responses = behaviour(_chunks_within_limit(requests, principal), context)
        async with contextlib.aclosing(responses):
            async for response in responses:
                yield response

    return grpc.stream_stream_rpc_method_handler(
        limited,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


if TYPE_CHECKING:  # generic only in the type stubs
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor


class ApiKeyInterceptor(_ServerInterceptor):
    """UNAUTHENTICATED / PERMISSION_DENIED / RESOURCE_EXHAUSTED before the servicer runs."""

    def __init__(self, keys: ApiKeys) -> None:
        self._keys = keys

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        full_method: str = handler_call_details.method
        if not full_method.startswith(AD_EVENT_SERVICE_PREFIX):
            return await continuation(handler_call_details)
        method = full_method.removeprefix(AD_EVENT_SERVICE_PREFIX)
        try:
            principal = self._keys.identify(presented_key(handler_call_details.invocation_metadata))
        except KeyEncodingError as error:
            return _refusal(
                method, RequestRefusedError(grpc.StatusCode.UNAUTHENTICATED, str(error))
            )
        if principal is None:
            return _refusal(
                method,
                RequestRefusedError(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "missing or unknown API key: send metadata x-api-key or authorization: Bearer",
                ),
            )
        role = "read" if method in _READ_METHODS else "ingest"
        if role not in principal.roles:
            return _refusal(
                method,
                RequestRefusedError(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"API key {principal.name!r} lacks the role {role!r} needed for {method}",
                ),
            )
        if method in _STREAM_METHODS:
            handler = await continuation(handler_call_details)
            if principal.bucket is None or handler is None:
                return handler
            return _rate_limited_stream(handler, principal)
        refusal = _over_limit(principal, method)
        if refusal is not None:
            return _refusal(method, refusal)
        return await continuation(handler_call_details)


def interceptors(settings: AuthSettings) -> list[grpc.aio.ServerInterceptor[Any, Any]]:
    if settings.api_keys_file is None:
        return []
    return [
        ApiKeyInterceptor(ApiKeys.load(settings.api_keys_file, settings.default_rate_limit_rps))
    ]
