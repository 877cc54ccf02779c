"""Bearer tokens (RFC 6750): who may call the models. Off unless AUTH_TOKENS_FILE names a file of
tokens, one a line. Several may stand at once, so a token is rotated without downtime: add the
new one and SIGHUP, move the clients, remove the old one and SIGHUP again. The file is read with
the models (serve/release.py), by the master, so every worker holds the same tokens.

Only the tokens' sha256 digests are kept. A presented token is hashed and compared with every
digest in constant time, so timing tells neither whether nor which token matched. Tokens are
never logged: a refusal's message names its reason, not what was sent."""

import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path

from serve.errors import ServiceError, StartupError
from serve.metrics import Metrics

# RFC 6750's b64token: what a bearer token may be made of.
TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# Shorter tokens are refused at start: a guessable token is no lock.
MIN_TOKEN_CHARS = 16
REALM = 'Bearer realm="crystal"'
# Why a request was refused, the `reason` label of crystal_unauthenticated_requests_total.
MISSING, MALFORMED, WRONG = "missing", "malformed", "wrong"


class Unauthorized(ServiceError):
    status = "401 Unauthorized"
    title = "Unauthorized"

    MESSAGES = {  # noqa: RUF012 (read-only)
        MISSING: "this route needs a bearer token: send the header Authorization: Bearer <token>",
        MALFORMED: "the Authorization header must be Bearer <token>",
        WRONG: "the bearer token is not valid",
    }

    def __init__(self, reason: str):
        super().__init__(self.MESSAGES[reason])
        # RFC 6750, 3.1: a presented token that fails says so; no credentials get the bare
        # challenge.
        error = ', error="invalid_token"' if reason == WRONG else ""
        self.headers = {"WWW-Authenticate": REALM + error}


@dataclass(frozen=True)
class BearerTokens:
    """The sha256 digests of the accepted tokens."""

    digests: tuple[bytes, ...]

    @classmethod
    def read(cls, path: Path) -> "BearerTokens":
        """One token a line; blank lines are skipped. A file that cannot be read, holds no token
        or a line that is no valid token stops the start (or the reload), naming the line."""
        try:
            # utf-8-sig: a byte order mark, as some editors write, is no part of the first token.
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise StartupError(f"AUTH_TOKENS_FILE {path} cannot be read: {reason}") from None
        digests = []
        for number, line in enumerate(lines, 1):
            token = line.strip()
            if not token:
                continue
            if not TOKEN.fullmatch(token):
                raise StartupError(
                    f"AUTH_TOKENS_FILE {path}, line {number}: a token is letters, digits and "
                    "-._~+/ with = only at its end"
                )
            if len(token) < MIN_TOKEN_CHARS:
                raise StartupError(
                    f"AUTH_TOKENS_FILE {path}, line {number}: a token needs at least "
                    f"{MIN_TOKEN_CHARS} characters"
                )
            digests.append(hashlib.sha256(token.encode()).digest())
        if not digests:
            raise StartupError(f"AUTH_TOKENS_FILE {path} holds no token")
        return cls(tuple(dict.fromkeys(digests)))

    def refusal(self, authorization: str | None) -> str | None:
        """None when the Authorization header carries an accepted token, else why not."""
        if not authorization:
            return MISSING
        # HTTP's whitespace only (RFC 9110, 5.6.3): str.strip() would drop other bytes, such as
        # a non-breaking space, and accept a token that is not one of the file.
        scheme, _, token = authorization.strip(" \t").partition(" ")
        token = token.lstrip(" ")
        if scheme.lower() != "bearer" or not TOKEN.fullmatch(token):
            return MALFORMED
        presented = hashlib.sha256(token.encode()).digest()
        matched = False
        for digest in self.digests:  # every digest, whatever matched first
            matched |= hmac.compare_digest(presented, digest)
        return None if matched else WRONG


class TokenGate:
    """The one check every protocol calls before a guarded route: open without tokens."""

    def __init__(self, tokens: BearerTokens | None, metrics: Metrics):
        self._tokens = tokens
        self._metrics = metrics

    def check(self, protocol: str, authorization: str | None) -> None:
        """Raises Unauthorized, counted by protocol and reason, unless the token is accepted."""
        if self._tokens is None:
            return
        reason = self._tokens.refusal(authorization)
        if reason is not None:
            self._metrics.unauthenticated(protocol, reason)
            raise Unauthorized(reason)
