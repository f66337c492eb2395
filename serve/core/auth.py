"""Who may open a stream: API keys (compared in constant time, held only as SHA-256 digests) and origins."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping

from serve.core.errors import CLOSE_POLICY, ProtocolError
from serve.core.settings import KEY_DIGEST_PREFIX, AuthOptions


def key_digest(key: str) -> str:
    """A key as the settings may hold it: ``sha256:<hex>``."""
    return KEY_DIGEST_PREFIX + hashlib.sha256(key.encode()).hexdigest()


def hashed(options: AuthOptions) -> AuthOptions:
    """The same options with every plain key replaced by its digest (what travels to the replicas)."""
    return options.model_copy(
        update={"api_keys": [k if k.startswith(KEY_DIGEST_PREFIX) else key_digest(k) for k in options.api_keys]}
    )


def bearer_token(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The credential a client presented: ``Authorization: Bearer KEY``, else ``?token=KEY``."""
    authorization = headers.get("authorization", "")
    scheme, _, credential = authorization.partition(" ")
    if scheme.lower() == "bearer" and credential.strip():
        return credential.strip()
    return query.get("token") or None


class Gate:
    """Decides whether a connection may open a stream; never stores or logs a key."""

    def __init__(self, options: AuthOptions, environ: Mapping[str, str] = os.environ) -> None:
        self._digests = [bytes.fromhex(k.removeprefix(KEY_DIGEST_PREFIX)) for k in hashed(options).api_keys]
        if options.api_keys_env:  # plain keys only, like the environment's other secrets
            env_keys = environ.get(options.api_keys_env, "").split(",")
            self._digests += [hashlib.sha256(k.strip().encode()).digest() for k in env_keys if k.strip()]
        self._origins = frozenset(options.allowed_origins)

    @property
    def keyless(self) -> bool:
        """No API key is needed (auth is off): then the per-address stream cap applies."""
        return not self._digests

    def check(self, headers: Mapping[str, str], query: Mapping[str, str]) -> None:
        """Raise ``unauthorized`` (close 1008) unless the origin and the key are acceptable."""
        origin = headers.get("origin")
        if self._origins and origin is not None and origin.rstrip("/").lower() not in self._origins:
            raise ProtocolError("unauthorized", "this origin may not connect", CLOSE_POLICY)
        if not self._digests:
            return
        token = bearer_token(headers, query)
        if token is None:
            raise ProtocolError("unauthorized", "an API key is required (Authorization: Bearer KEY or ?token=KEY)", CLOSE_POLICY)
        presented = hashlib.sha256(token.encode()).digest()
        # Every key is compared, equal-length digests, so timing says nothing about any key.
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(presented, digest)
        if not matched:
            raise ProtocolError("unauthorized", "the API key is not valid", CLOSE_POLICY)
