"""The Kanban's web application: a JSON API, live updates and the pages, on Starlette.

``create_app(db)`` returns the ASGI app on an open :class:`amphora.DB`;
``amphora kanban serve URI`` runs it under uvicorn (see :mod:`amphora_kanban.cli`).

Modules, one concern each::

    app        create_app and the route table (who may call what, what writes)
    api        how a JSON route runs: authorise, call the model in a transaction, answer
    auth       passwords (Argon2id), sessions, CSRF, invitations, sign-in limits
    accounts   the accounts routes
    boards     the board and card routes
    archive    searching the bag (through the JSON mirror when there is one)
    history    time travel (?at=)
    live       Server-Sent Events from the change feed
    pages      the HTML pages and /healthz
    store      the database: transactions in worker threads, retried on conflicts
    server     uvicorn on a socket of our own, stopping cleanly (amphora kanban serve)
    http       errors as statuses (the one mapping), request bodies, security headers

Routes (JSON unless said; errors are ``{"error": message}`` with 400 naming the field,
401 not signed in, 403 role or CSRF, 404, 409 with ``rule``, 429 with Retry-After)::

    POST  /api/login                          {email, password} -> {user, csrf_token} + cookie
    POST  /api/logout                         -> {}
    GET   /api/me                             -> {user, csrf_token}
    GET   /api/users                          -> [{id, email, display_name, role}]
    POST  /api/invitations              admin {email, role} -> {link, token, expires}
    POST  /api/invitations/{token}            {password, display_name} -> as login
    GET   /api/boards                         -> [{name, title}]
    POST  /api/boards                   admin {name, title} -> board
    POST  /api/boards/import            admin {name?, data} -> board
    GET   /api/boards/{name}[?at=ISO]         -> {name, title, created, generation, states,
                                                  cards, users} (+ "at")
    PUT   /api/boards/{name}/states     admin [state, ...] -> board
    POST  /api/boards/{name}/cards            {title, size?, parent?, state?, description?}
    GET   /api/boards/{name}/cards/{id}       -> card + history, comments, progress
    PATCH /api/boards/{name}/cards/{id}       {title?, description?, size?, blocked?,
                                               assignee?}
    POST  /api/boards/{name}/cards/{id}/move  {state, parent, before} -> card + warnings
    POST  /api/boards/{name}/cards/{id}/comments  {body}
    POST  /api/boards/{name}/cards/{id}/archive   -> {archived: [ids]}
    POST  /api/boards/{name}/cards/{id}/restore   -> the feature
    GET   /api/boards/{name}/archive?text=    -> [{feature, tasks, matched}]
    GET   /api/boards/{name}/metrics?from=&to=    -> flow metrics
    GET   /api/boards/{name}/export     admin -> the export document
    GET   /api/boards/{name}/events?generation=N  text/event-stream
    GET   /healthz                            -> {ok, last_transaction} (503 when the db fails)

Pages (HTML files of ``web/static/``; signed out -> 303 to ``/login?next=...``, except
the first two): ``/login``, ``/invite/{token}``, ``/``, ``/boards/{name}``,
``/boards/{name}/metrics``; static files under ``/static/``.

Every state-changing route except login and invitation acceptance needs the header
``X-CSRF-Token`` equal to the session's token. Every response carries a
Content-Security-Policy (no inline scripts), ``X-Content-Type-Options: nosniff`` and
``Referrer-Policy: same-origin``.
"""
from __future__ import annotations

from amphora_kanban.web.app import create_app

__all__ = ["create_app"]
