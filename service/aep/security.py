"""TLS / mTLS for the gRPC port, and API-key authentication with per-key rate limits.

Only adevents.v1.AdEventService is guarded: grpc.health.v1 (kubelet probes)
and reflection stay open, and HTTP /metrics and /health live on metrics.host,
which can be bound to another interface.

API keys come from a YAML file (a Kubernetes Secret mounted as a file):

    - name: web-sdk            # used in logs and errors; never the key itself
      key: "long random string"
      roles: [ingest, read]     # ingest: Send*/Stream*; read: HealthCheck (default: both)
      rate_limit_rps: 500       # RPCs per second (default auth.default_rate_limit_rps; 0: none)

A client sends `x-api-key: <key>` or `authorization: Bearer <key>`. Keys are
compared by their SHA-256 digest with hmac.compare_digest, so neither the
lookup nor the comparison depends on how much of a guess was right.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import yaml

from aep.settings import AuthSettings, TlsSettings

AD_EVENT_SERVICE_PREFIX = "/adevents.v1.AdEventService/"
_READ_METHODS = frozenset({"HealthCheck"})
_STREAM_METHODS = frozenset({"StreamAdEvents"})
ROLES = frozenset({"ingest", "read"})


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
            roles = frozenset(entry.get("roles") or ROLES)
            if not roles <= ROLES:
                raise SecurityConfigError(f"{where}: unknown roles {sorted(roles - ROLES)}")
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


def presented_key(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
    for key, value in metadata or ():
        text = value.decode() if isinstance(value, bytes) else value
        if key == "x-api-key":
            return text
        if key == "authorization" and text.lower().startswith("bearer "):
            return text[7:].strip()
    return None


def _refusal(method: str, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler[Any, Any]:
    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)

    if method in _STREAM_METHODS:
        return grpc.stream_stream_rpc_method_handler(refuse)
    # Stream-unary (the same wire format): refused without waiting for the
    # request, which a client may never finish sending (see aep.server).
    return grpc.stream_unary_rpc_method_handler(refuse)


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
        metadata = handler_call_details.invocation_metadata
        principal = self._keys.identify(presented_key(metadata))
        if principal is None:
            return _refusal(
                method,
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or unknown API key: send metadata x-api-key or authorization: Bearer",
            )
        role = "read" if method in _READ_METHODS else "ingest"
        if role not in principal.roles:
            return _refusal(
                method,
                grpc.StatusCode.PERMISSION_DENIED,
                f"API key {principal.name!r} lacks the role {role!r} needed for {method}",
            )
        if principal.bucket is not None:
            wait = principal.bucket.take()
            if wait is not None:
                return _refusal(
                    method,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"API key {principal.name!r} is over its rate limit of "
                    f"{principal.bucket.rate:g} RPCs/s; retry in {wait:.3f}s",
                )
        return await continuation(handler_call_details)


def interceptors(settings: AuthSettings) -> list[grpc.aio.ServerInterceptor[Any, Any]]:
    if settings.api_keys_file is None:
        return []
    return [
        ApiKeyInterceptor(ApiKeys.load(settings.api_keys_file, settings.default_rate_limit_rps))
    ]
