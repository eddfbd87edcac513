"""Accounts and security over HTTP: sign-in, sessions and their cookie, CSRF, roles,
invitations, sign-in limits; who may call which route."""
from __future__ import annotations

import re

import pytest
from kanbanprocess import ADMIN_EMAIL, PASSWORD, STORAGES, signed_in

from amphora_kanban.web.app import API, PAGES

# Accounts, sessions, invitations and their refusals, with the app on each storage kind
# (sessions and invitations are stored in the database).
on_each_storage = pytest.mark.parametrize("kanban_server", STORAGES, indirect=True)

# Every route of the app, with what a signed-out client and a member get.
PUBLIC = {("POST", "/api/login"), ("POST", "/api/invitations/{token}")}
ADMIN_ONLY = {("POST", "/api/invitations"), ("POST", "/api/boards"),
              ("POST", "/api/boards/import"), ("PUT", "/api/boards/{name}/states"),
              ("GET", "/api/boards/{name}/export")}
SIGNED_IN = {
    ("POST", "/api/logout"), ("GET", "/api/me"), ("GET", "/api/users"),
    ("GET", "/api/boards"), ("GET", "/api/boards/{name}"),
    ("POST", "/api/boards/{name}/cards"), ("GET", "/api/boards/{name}/cards/{id}"),
    ("PATCH", "/api/boards/{name}/cards/{id}"),
    ("POST", "/api/boards/{name}/cards/{id}/move"),
    ("POST", "/api/boards/{name}/cards/{id}/comments"),
    ("POST", "/api/boards/{name}/cards/{id}/archive"),
    ("POST", "/api/boards/{name}/cards/{id}/restore"),
    ("GET", "/api/boards/{name}/archive"), ("GET", "/api/boards/{name}/metrics"),
    ("GET", "/api/boards/{name}/events"),
}


def concrete(path: str) -> str:
    return path.replace("{name}", "team").replace("{id}", "card").replace("{token}", "t")


def test_the_route_table_is_the_one_tested():
    table = {(method, path) for method, path, *_ in API}
    assert table | {("GET", "/api/boards/{name}/events")} == PUBLIC | ADMIN_ONLY | SIGNED_IN


@on_each_storage
def test_signed_out_clients_reach_only_sign_in_invitations_health_and_the_login_page(
        anonymous):
    for method, path in sorted(ADMIN_ONLY | SIGNED_IN):
        reply = anonymous.request(method, concrete(path), json={})
        assert reply.status_code == 401, (method, path, reply.text)
        assert reply.json() == {"error": "not signed in"}
    for path, _, for_signed_in in PAGES:
        reply = anonymous.get(concrete(path))
        if for_signed_in:
            assert reply.status_code == 303, path
            target = concrete(path).replace("/", "%2F")
            assert reply.headers["location"] == f"/login?next={target}"
        else:  # the page itself, or 404 while its file is not installed
            assert reply.status_code in (200, 404) and "location" not in reply.headers
    assert anonymous.get("/healthz").json()["ok"] is True
    assert anonymous.post("/api/login", json={"email": ADMIN_EMAIL, "password": "x" * 8}
                          ).status_code == 401
    assert anonymous.post("/api/invitations/unknown", json={"password": PASSWORD}
                          ).status_code == 404


@on_each_storage
def test_members_cannot_call_admin_routes(member, admin):
    assert admin.post("/api/boards", json={"name": "team", "title": "Team"}).status_code == 201
    for method, path in sorted(ADMIN_ONLY):
        reply = member.request(method, concrete(path), json={})
        assert reply.status_code == 403, (method, path, reply.text)
        assert "administrator" in reply.json()["error"]


@on_each_storage
def test_state_changes_need_the_sessions_csrf_token(kanban_server, admin, member):
    assert admin.post("/api/boards", json={"name": "team", "title": "Team"}).status_code == 201
    token = member.headers.pop("X-CSRF-Token")
    for method, path in sorted(SIGNED_IN | ADMIN_ONLY):
        if method in ("POST", "PUT", "PATCH"):
            reply = member.request(method, concrete(path), json={})
            assert reply.status_code == 403, (method, path, reply.text)
            assert "x-csrf-token" in reply.json()["error"]
    wrong = member.post("/api/boards/team/cards", json={"title": "x"},
                        headers={"X-CSRF-Token": admin.headers["X-CSRF-Token"]})
    assert wrong.status_code == 403
    assert member.get("/api/boards/team").json()["cards"] == []  # nothing was made
    right = member.post("/api/boards/team/cards", json={"title": "x"},
                        headers={"X-CSRF-Token": token})
    assert right.status_code == 201


@on_each_storage
def test_sign_in_sets_a_protected_cookie_and_sign_out_ends_the_session(kanban_server, admin):
    client = kanban_server.client()
    reply = client.post("/api/login", json={"email": "ADMIN@localhost", "password": PASSWORD})
    assert reply.status_code == 200, reply.text
    assert (reply.json()["user"]["email"], reply.json()["user"]["role"]) == (ADMIN_EMAIL,
                                                                              "admin")
    cookie = reply.headers["set-cookie"]
    assert cookie.startswith("kanban_session=")
    assert {"httponly", "samesite=lax", "path=/"} <= {
        part.strip().lower() for part in cookie.split(";")}
    assert "secure" not in cookie.lower()  # plain http
    signed_in(client, reply)
    me = client.get("/api/me").json()
    assert me["csrf_token"] == reply.json()["csrf_token"]
    value = client.cookies["kanban_session"]

    assert client.post("/api/logout").json() == {}
    again = kanban_server.client(cookies={"kanban_session": value})
    assert again.get("/api/me").status_code == 401  # gone server-side, not just forgotten
    assert admin.get("/api/me").status_code == 200  # another session is untouched
    forged = kanban_server.client(cookies={"kanban_session": value[:-2] + "xx"})
    assert forged.get("/api/me").status_code == 401


@on_each_storage
def test_the_cookie_is_secure_over_https(kanban_server, admin):
    # uvicorn believes the proxy header of a local client: the request was https
    reply = kanban_server.client().post(
        "/api/login", json={"email": ADMIN_EMAIL, "password": PASSWORD},
        headers={"X-Forwarded-Proto": "https"})
    assert reply.status_code == 200
    assert "secure" in [p.strip().lower() for p in reply.headers["set-cookie"].split(";")]


@on_each_storage
def test_sign_in_errors(kanban_server, admin):
    client = kanban_server.client()
    assert client.post("/api/login", json={"email": "nobody", "password": PASSWORD}
                       ).json()["field"] == "email"
    assert client.post("/api/login", json={"email": ADMIN_EMAIL}).json()["field"] == "password"
    assert client.post("/api/login", json=[1]).json()["field"] == "body"
    for email in (ADMIN_EMAIL, "nobody@example.org"):
        reply = client.post("/api/login", json={"email": email, "password": "wrong pass"})
        assert reply.status_code == 401
        assert reply.json() == {"error": "wrong email or password"}


@on_each_storage
def test_repeated_failures_are_refused_for_a_while(kanban_server, admin):
    client = kanban_server.client()
    wrong = {"email": ADMIN_EMAIL, "password": "not the password"}
    assert [client.post("/api/login", json=wrong).status_code for _ in range(5)] == [401] * 5
    refused = client.post("/api/login", json={"email": ADMIN_EMAIL, "password": PASSWORD})
    assert refused.status_code == 429
    assert 0 < int(refused.headers["retry-after"]) <= 300
    # the same address, another account: refused too (counted per address and per email)
    other = client.post("/api/login", json={"email": "x@example.org", "password": PASSWORD})
    assert other.status_code == 429
    assert admin.get("/api/me").status_code == 200  # signed-in sessions carry on


@on_each_storage
def test_a_success_clears_the_failures(kanban_server, admin):
    client = kanban_server.client()
    wrong = {"email": ADMIN_EMAIL, "password": "not the password"}
    right = {"email": ADMIN_EMAIL, "password": PASSWORD}
    for _ in range(2):
        assert [client.post("/api/login", json=wrong).status_code for _ in range(4)] \
            == [401] * 4
        assert client.post("/api/login", json=right).status_code == 200


@on_each_storage
def test_invitations_are_one_time(kanban_server, admin, anonymous):
    invited = admin.post("/api/invitations",
                         json={"email": "New@Example.org", "role": "admin"})
    assert invited.status_code == 201, invited.text
    link, token = invited.json()["link"], invited.json()["token"]
    assert link == f"{kanban_server.url}/invite/{token}"
    assert re.match(r"\d{4}-\d\d-\d\dT", invited.json()["expires"])
    short = anonymous.post(f"/api/invitations/{token}", json={"password": "short"})
    assert short.status_code == 400 and short.json()["field"] == "password"
    accepted = anonymous.post(f"/api/invitations/{token}",
                              json={"password": "a long enough one", "display_name": "Neu"})
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["user"] == {**accepted.json()["user"], "email": "new@example.org",
                                       "display_name": "Neu", "role": "admin"}
    assert anonymous.get("/api/me").status_code == 200  # signed in by accepting
    again = kanban_server.client().post(f"/api/invitations/{token}",
                                        json={"password": "another long one"})
    assert again.status_code == 404
    assert kanban_server.sign_in("new@example.org", "a long enough one")


@on_each_storage
def test_invitation_errors(kanban_server, admin, member):
    assert admin.post("/api/invitations", json={"email": "x@example.org", "role": "boss"}
                      ).json()["field"] == "role"
    assert admin.post("/api/invitations", json={"role": "member"}).json()["field"] == "email"
    taken = admin.post("/api/invitations", json={"email": "member@example.org"})
    assert taken.status_code == 400 and taken.json()["field"] == "email"
    users = admin.get("/api/users").json()
    assert [(u["email"], u["role"]) for u in users] == [
        ("admin@localhost", "admin"), ("member@example.org", "member")]
    assert member.get("/api/users").json() == users
