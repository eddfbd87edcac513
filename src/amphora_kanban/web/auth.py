"""Accounts and security: passwords, sessions, invitations, sign-in limits, access rules.

Stored in the database beside the site (``conn.root()["kanban_auth"]``, an
:class:`AuthStore`), so that several app processes on one database share them:

- ``secret``: the key that signs session cookies (itsdangerous), made once;
- ``sessions``: SHA-256 of the session id -> ``(user id, csrf token, expiry)``. The
  cookie ``kanban_session`` carries the signed session id; the database holds only its
  hash, so reading the database gives no usable session;
- ``invitations``: SHA-256 of the token -> ``(email, role, expiry)``; one-time, valid
  for ``INVITATION_DAYS``.

A request that carries an expired session is refused (401) and the session dropped, in
a transaction of its own; every sign-in drops the expired sessions and invitations.

Passwords are Argon2id hashes (argon2-cffi) kept in ``User.password_hash``; at least
``PASSWORD_MIN`` characters. Sign-in failures are counted in memory per client address
and per email (:class:`SignInLimiter`): ``LIMIT`` failures within ``WINDOW`` seconds
refuse further attempts with 429 until the oldest ages out; a success clears them.

:func:`authorise` is the one check of who may call what: every route names its
access, ``PUBLIC``, ``SIGNED_IN`` or ``ADMIN``; a state-changing request of a signed-in
route must also carry ``X-CSRF-Token`` equal to its session's token.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from BTrees.OOBTree import OOBTree
from itsdangerous import BadSignature, Signer
from persistent import Persistent

import amphora
from amphora_kanban.errors import BadInput, NotFound
from amphora_kanban.site import Site, User
from amphora_kanban.web.http import ApiError

__all__ = ["AuthStore", "Passwords", "Session", "SignInLimiter", "auth_of", "authorise",
           "PUBLIC", "SIGNED_IN", "ADMIN", "COOKIE", "CSRF_HEADER"]

AUTH_KEY = "kanban_auth"
COOKIE = "kanban_session"
CSRF_HEADER = "x-csrf-token"
PUBLIC, SIGNED_IN, ADMIN = "public", "signed-in", "admin"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")

SESSION_DAYS = 14
INVITATION_DAYS = 7
PASSWORD_MIN = 8
PASSWORD_MAX = 1024
LIMIT = 5
WINDOW = 300.0
_DAY = 86400.0


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Session:
    """A signed-in session: whose, its CSRF token, when it ends."""

    key: str  # the hash of its id
    user_id: str
    csrf: str
    expires: float


class AuthStore(Persistent):
    """Sessions, invitations and the cookie-signing secret (see the module docstring)."""

    def __init__(self) -> None:
        self.secret = secrets.token_hex(32)
        self.sessions = OOBTree()
        self.expiries = OOBTree()  # (expiry, session key) -> None: to drop expired ones
        self.invitations = OOBTree()

    # -- sessions -----------------------------------------------------------------------
    def open_session(self, user: User, now: float, days: float = SESSION_DAYS
                     ) -> tuple[str, Session]:
        """A new session for ``user``: its id (for the cookie) and its record. Expired
        sessions are dropped on the way."""
        self.drop_expired(now)
        id = secrets.token_urlsafe(32)
        session = Session(_digest(id), user.id, secrets.token_urlsafe(24), now + days * _DAY)
        self.sessions[session.key] = (session.user_id, session.csrf, session.expires)
        self.expiries[(session.expires, session.key)] = None
        return id, session

    def session(self, id: str | None, now: float) -> Session | None:
        """The live session with id ``id``; None when unknown or expired."""
        session = self._session(id)
        return session if session is not None and session.expires > now else None

    def _session(self, id: str | None) -> Session | None:
        record = self.sessions.get(_digest(id)) if id else None
        return None if record is None else Session(_digest(id), *record)

    def drop_if_expired(self, id: str | None, now: float) -> bool:
        """Drop session ``id`` if it has expired; whether it did."""
        session = self._session(id)
        if session is None or session.expires > now:
            return False
        self.close_session(session)
        return True

    def close_session(self, session: Session) -> None:
        self.sessions.pop(session.key, None)
        self.expiries.pop((session.expires, session.key), None)

    def drop_expired(self, now: float) -> int:
        """Drop the expired sessions and invitations; how many."""
        stale = list(self.expiries.keys(max=(now, "\uffff")))
        for expires, key in stale:
            self.close_session(Session(key, "", "", expires))
        invitations = [k for k, record in self.invitations.items() if record[2] <= now]
        for key in invitations:
            del self.invitations[key]
        return len(stale) + len(invitations)

    # -- invitations --------------------------------------------------------------------
    def invite(self, email: str, role: str, now: float, days: float = INVITATION_DAYS
               ) -> tuple[str, float]:
        """A one-time invitation token for ``email`` with ``role``, and its expiry."""
        token = secrets.token_urlsafe(32)
        expires = now + days * _DAY
        self.invitations[_digest(token)] = (email, role, expires)
        return token, expires

    def invitation(self, token: str, now: float) -> tuple[str, str]:
        """``(email, role)`` of a valid invitation; NotFound when unknown, used or expired."""
        record = self.invitations.get(_digest(token)) if isinstance(token, str) else None
        if record is None or record[2] <= now:
            raise NotFound("invitation", "(unknown, used or expired)")
        return record[0], record[1]

    def consume_invitation(self, token: str) -> None:
        del self.invitations[_digest(token)]


def auth_of(conn: amphora.Connection) -> AuthStore:
    """The AuthStore in ``conn``'s root (created by :func:`setup_auth`)."""
    store = conn.root().get(AUTH_KEY)
    if store is None:
        raise ApiError(503, "the site is not set up yet")
    return store


def setup_auth(conn: amphora.Connection) -> AuthStore:
    """The AuthStore, created if missing."""
    root = conn.root()
    if AUTH_KEY not in root:
        root[AUTH_KEY] = AuthStore()
    return root[AUTH_KEY]


class Passwords:
    """Argon2id hashing. ``fast`` lowers the cost (for tests only)."""

    def __init__(self, fast: bool = False):
        self.hasher = (PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
                       if fast else PasswordHasher())
        self._dummy = self.hasher.hash(secrets.token_hex(8))

    @staticmethod
    def check(password: object, field: str = "password") -> str:
        """A password acceptable for a new account (BadInput naming ``field`` if not)."""
        if not isinstance(password, str):
            raise BadInput(field, "must be a string")
        if len(password) < PASSWORD_MIN:
            raise BadInput(field, f"must be at least {PASSWORD_MIN} characters")
        if len(password) > PASSWORD_MAX:
            raise BadInput(field, f"must be at most {PASSWORD_MAX} characters")
        return password

    def hash(self, password: str) -> str:
        return self.hasher.hash(self.check(password))

    def verify(self, user: User | None, password: str) -> bool:
        """Whether ``password`` is ``user``'s. Without a user (or a password set) a
        dummy hash is checked, so that the answer takes as long either way."""
        stored = user.password_hash if user is not None else None
        try:
            return self.hasher.verify(stored or self._dummy, password) and stored is not None
        except (VerificationError, InvalidHashError):
            return False


class SignInLimiter:
    """Counts sign-in failures per key (``("address", ip)``, ``("email", email)``)."""

    def __init__(self, limit: int = LIMIT, window: float = WINDOW):
        self.limit = limit
        self.window = window
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, keys: list[tuple[str, str]], now: float | None = None) -> int:
        """Seconds until a sign-in may be tried again for all ``keys`` (0: now)."""
        now = time.monotonic() if now is None else now
        wait = 0.0
        with self._lock:
            for key in keys:
                times = self._prune(key, now)
                if len(times) >= self.limit:
                    wait = max(wait, times[0] + self.window - now)
        return int(wait) + 1 if wait > 0 else 0

    def failed(self, keys: list[tuple[str, str]], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            for key in keys:
                self._prune(key, now).append(now)

    def succeeded(self, keys: list[tuple[str, str]]) -> None:
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)

    def _prune(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            # (keeps the table from growing with every address ever seen)
            del self._failures[key]
            times = self._failures.setdefault(key, deque())
        return times


@dataclass
class Identity:
    """Who is calling: the session and its user, or neither."""

    session: Session | None
    user: User | None


def authorise(conn: amphora.Connection, site: Site, access: str, method: str,
              session_id: str | None, csrf: str | None, now: float) -> Identity:
    """Check that a request may proceed; who it is. Raises ApiError: 401 when a
    signed-in route is called without a live session, 403 when a state-changing
    request's CSRF token is missing or wrong, or when an admin route is called by a
    member. Public routes pass (with the caller's identity when there is one)."""
    session = auth_of(conn).session(session_id, now)
    user = None
    if session is not None:
        try:
            user = site.user(session.user_id)
        except NotFound:  # the account was removed
            session = None
    if access == PUBLIC:
        return Identity(session, user)
    if session is None or user is None:
        raise ApiError(401, "not signed in")
    if method not in SAFE_METHODS and not (
            csrf and hmac.compare_digest(csrf.encode(), session.csrf.encode())):
        raise ApiError(403, f"missing or wrong {CSRF_HEADER} header")
    if access == ADMIN and not user.admin:
        raise ApiError(403, "only an administrator may do this")
    return Identity(session, user)


class CookieSigner:
    """Signs session ids for the cookie with the database's secret."""

    def __init__(self, secret: str):
        self._signer = Signer(secret, salt="kanban-session")

    def sign(self, session_id: str) -> str:
        return self._signer.sign(session_id).decode()

    def unsign(self, cookie: Any) -> str | None:
        if not isinstance(cookie, str) or not cookie:
            return None
        try:
            return self._signer.unsign(cookie).decode()
        except BadSignature:
            return None
