"""A site: its boards and its accounts.

Accounts are model objects; the authentication layer keeps an Argon2id hash in
``User.password_hash`` (None until a password is set) and is not part of the model.
"""
from __future__ import annotations

import uuid
from typing import Any, Iterable

from BTrees.OOBTree import OOBTree
from persistent import Persistent

from amphora_kanban import text
from amphora_kanban.board import Board
from amphora_kanban.errors import BadInput, NotFound
from amphora_kanban.state import slug
from amphora_kanban.transfer import import_board

__all__ = ["Site", "User", "ROLES"]

ROLES = ("admin", "member")


def _role(value: object) -> str:
    if value not in ROLES:
        raise BadInput("role", f"must be one of {list(ROLES)}, not {value!r}")
    return value  # type: ignore[return-value]


class User(Persistent):
    """An account: ``id``, ``email`` (unique on its site), ``display_name``, ``role``
    (``"admin"`` or ``"member"``), and ``password_hash`` for the auth layer."""

    def __init__(self, id: str, email: str, display_name: str, role: str = "member"):
        self.id = id
        self.email = email
        self.display_name = display_name
        self.role = role
        self.password_hash: str | None = None

    @property
    def admin(self) -> bool:
        return self.role == "admin"

    def to_json(self) -> dict[str, Any]:
        """The public fields (never the password hash)."""
        return {"id": self.id, "email": self.email, "display_name": self.display_name,
                "role": self.role}

    def __repr__(self) -> str:
        return f"<User {self.email!r}>"


class Site(Persistent):
    """Boards by name and users by id (with an index by email)."""

    def __init__(self, title: str):
        self.title = text.title(title)
        self._boards = OOBTree()
        self._users = OOBTree()
        self._emails = OOBTree()  # email -> user id

    # -- boards -----------------------------------------------------------------------

    def boards(self) -> list[Board]:
        return list(self._boards.values())

    def board(self, name: object) -> Board:
        board = self._boards.get(name) if isinstance(name, str) else None
        if board is None:
            raise NotFound("board", name)
        return board

    def _board_name(self, name: object) -> str:
        if not isinstance(name, str) or not name or slug(name) != name:
            raise BadInput("name", f"must be lower-case words joined by '-', not {name!r}")
        if name in self._boards:
            raise BadInput("name", f"a board {name!r} exists already")
        return name

    def add_board(self, name: str, title: str,
                  states: Iterable[dict[str, Any]] | None = None) -> Board:
        """A new board; ``states`` (JSON dicts) default to the two-tier default states."""
        board = Board(self._board_name(name), title, states)
        self._boards[name] = board
        return board

    def import_board(self, data: Any, name: str | None = None) -> Board:
        """A new board from an export (see :mod:`amphora_kanban.transfer`)."""
        board = import_board(data, name)
        self._board_name(board.name)
        self._boards[board.name] = board
        return board

    def remove_board(self, name: str) -> None:
        self.board(name)
        del self._boards[name]

    # -- users ------------------------------------------------------------------------

    def users(self) -> list[User]:
        return list(self._users.values())

    def user(self, id: object) -> User:
        user = self._users.get(id) if isinstance(id, str) else None
        if user is None:
            raise NotFound("user", id)
        return user

    def user_by_email(self, email: object) -> User:
        address = text.email(email)
        if address not in self._emails:
            raise NotFound("user", email)
        return self._users[self._emails[address]]

    def add_user(self, email: str, display_name: str, role: str = "member") -> User:
        """A new account; the email must not be in use on this site."""
        address = text.email(email)
        if address in self._emails:
            raise BadInput("email", f"{address!r} already has an account")
        user = User(uuid.uuid4().hex, address, text.title(display_name, "display_name"),
                    _role(role))
        self._users[user.id] = user
        self._emails[address] = user.id
        return user

    def update_user(self, id: str, changes: dict[str, Any]) -> User:
        """Change ``email``, ``display_name`` or ``role``; checked first."""
        user = self.user(id)
        if not isinstance(changes, dict):
            raise BadInput("user", "must be an object")
        unknown = set(changes) - {"email", "display_name", "role"}
        if unknown:
            raise BadInput(sorted(unknown)[0], "is not a field a user update can change")
        checked: dict[str, Any] = {}
        if "email" in changes:
            checked["email"] = text.email(changes["email"])
            owner = self._emails.get(checked["email"])
            if owner is not None and owner != id:
                raise BadInput("email", f"{checked['email']!r} already has an account")
        if "display_name" in changes:
            checked["display_name"] = text.title(changes["display_name"], "display_name")
        if "role" in changes:
            checked["role"] = _role(changes["role"])
        if "email" in checked and checked["email"] != user.email:
            del self._emails[user.email]
            self._emails[checked["email"]] = id
        for key, value in checked.items():
            setattr(user, key, value)
        return user
