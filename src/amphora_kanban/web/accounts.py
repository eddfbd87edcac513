"""The accounts routes: sign in and out, who am I, the people, invitations.

Handlers run inside their transaction (see :mod:`amphora_kanban.web.api`); the
functions at the end are used by the commands too.
"""
from __future__ import annotations

from typing import Any

import amphora
from amphora_kanban import text
from amphora_kanban.card import iso
from amphora_kanban.errors import BadInput, NotFound
from amphora_kanban.site import ROLES, Site, User
from amphora_kanban.web.api import Call, Reply
from amphora_kanban.web.auth import AuthStore, Passwords, Session, auth_of
from amphora_kanban.web.http import ApiError
from amphora_kanban.web.store import site_of

__all__ = ["login", "logout", "me", "users", "invite", "accept_invitation",
           "add_account", "first_admin"]


def _signed_in(call: Call, user: User) -> Reply:
    id, session = call.auth.open_session(user, call.now, call.services.session_days)
    return Reply(_me(user, session), session=(id, session))


def _me(user: User, session: Session) -> dict[str, Any]:
    return {"user": user.to_json(), "csrf_token": session.csrf}


def login(call: Call) -> Reply:
    """``POST /api/login {email, password}``: a session, or 401 (429 after too many
    failures from this address or for this email)."""
    email = text.email(call.field("email"))
    password = call.field("password", kind=str)
    client = call.request.client.host if call.request.client else "unknown"
    keys = [("address", client), ("email", email)]
    limiter = call.services.limiter
    wait = limiter.retry_after(keys)
    if wait:
        raise ApiError(429, f"too many failed sign-ins: try again in {wait} s",
                       {"retry-after": str(wait)})
    try:
        user: User | None = call.site.user_by_email(email)
    except NotFound:
        user = None
    if not call.services.passwords.verify(user, password):
        limiter.failed(keys)
        raise ApiError(401, "wrong email or password")
    limiter.succeeded(keys)
    return _signed_in(call, user)


def logout(call: Call) -> Reply:
    """``POST /api/logout``: the session is deleted."""
    if call.identity.session is not None:
        call.auth.close_session(call.identity.session)
    return Reply({}, clear_session=True)


def me(call: Call) -> dict[str, Any]:
    """``GET /api/me``: the signed-in user and the session's CSRF token."""
    user = call.user  # (401 without a session)
    return _me(user, call.identity.session)  # type: ignore[arg-type]


def users(call: Call) -> list[dict[str, Any]]:
    """``GET /api/users``: everyone on the site."""
    return [u.to_json() for u in sorted(call.site.users(), key=lambda u: u.email)]


def invite(call: Call) -> Reply:
    """``POST /api/invitations {email, role}`` (admin): a one-time link."""
    email = text.email(call.field("email"))
    role = call.field("role", "member")
    if role not in ROLES:
        raise BadInput("role", f"must be one of {list(ROLES)}, not {role!r}")
    try:
        if call.site.user_by_email(email).password_hash is not None:
            raise BadInput("email", f"{email!r} already has an account")
    except NotFound:
        pass
    token, expires = call.auth.invite(email, role, call.now)
    link = f"{str(call.request.base_url).rstrip('/')}/invite/{token}"
    return Reply({"link": link, "token": token, "expires": iso(expires)}, 201)


def accept_invitation(call: Call) -> Reply:
    """``POST /api/invitations/{token} {password, display_name}``: the account is made
    (or, for an account waiting for its first password, given it) and signed in."""
    token = call.param("token")
    email, role = call.auth.invitation(token, call.now)
    password_hash = call.services.passwords.hash(call.field("password"))
    name = call.field("display_name", None)
    user = _account(call.site, email, name, role)
    user.password_hash = password_hash
    call.auth.consume_invitation(token)
    return _signed_in(call, user)


def _account(site: Site, email: str, name: Any, role: str) -> User:
    try:
        user = site.user_by_email(email)
    except NotFound:
        return site.add_user(email, name or email.partition("@")[0], role)
    if name:
        site.update_user(user.id, {"display_name": name})
    return user


# -- for the commands ----------------------------------------------------------------

def add_account(conn: amphora.Connection, passwords: Passwords, email: str,
                password: str, name: str | None, admin: bool) -> User:
    """A new account with a password (``amphora kanban adduser``)."""
    site = site_of(conn)
    address = text.email(email)
    password_hash = passwords.hash(password)
    user = site.add_user(address, name or address.partition("@")[0],
                         "admin" if admin else "member")
    user.password_hash = password_hash
    return user


def first_admin(conn: amphora.Connection, email: str, now: float) -> str | None:
    """When no administrator can sign in: an admin account for ``email`` (made if
    missing, promoted if a member) and the token of a one-time invitation that sets its
    password. None when an administrator has a password."""
    site = site_of(conn)
    auth: AuthStore = auth_of(conn)
    if any(u.admin and u.password_hash is not None for u in site.users()):
        return None
    address = text.email(email, "admin email")
    try:
        user = site.user_by_email(address)
        site.update_user(user.id, {"role": "admin"})
    except NotFound:
        site.add_user(address, "Administrator", "admin")
    token, _ = auth.invite(address, "admin", now)
    return token
