"""Accounts on a site: users with email, display name and role."""
import pytest

from amphora_kanban import BadInput, NotFound, Site


def test_users_are_added_found_and_updated(session):
    site = session.root.site = Site("S")
    ann = site.add_user("Ann@Example.org ", "Ann", role="admin")
    bob = site.add_user("bob@example.org", "Bob")
    session.commit()
    assert ann.to_json() == {"id": ann.id, "email": "ann@example.org",
                             "display_name": "Ann", "role": "admin"}
    assert ann.admin and not bob.admin and ann.password_hash is None
    assert site.user_by_email("ANN@example.org") is ann and site.user(bob.id) is bob
    site.update_user(bob.id, {"email": "robert@example.org", "role": "admin"})
    assert site.user_by_email("robert@example.org") is bob and bob.admin
    with pytest.raises(NotFound):
        site.user_by_email("bob@example.org")
    assert sorted(u.display_name for u in site.users()) == ["Ann", "Bob"]


@pytest.mark.parametrize("call, field", [
    (lambda s, u: s.add_user("not-an-email", "X"), "email"),
    (lambda s, u: s.add_user("ann@example.org", "Again"), "email"),
    (lambda s, u: s.add_user("x@example.org", ""), "display_name"),
    (lambda s, u: s.add_user("x@example.org", "X", role="owner"), "role"),
    (lambda s, u: s.update_user(u.id, {"email": "ann@example.org"}), "email"),
    (lambda s, u: s.update_user(u.id, {"password_hash": "x"}), "password_hash"),
])
def test_bad_account_input_names_the_field(call, field):
    site = Site("S")
    site.add_user("ann@example.org", "Ann")
    bob = site.add_user("bob@example.org", "Bob")
    with pytest.raises(BadInput) as err:
        call(site, bob)
    assert err.value.field == field
    assert bob.email == "bob@example.org"


def test_unknown_users_are_not_found():
    with pytest.raises(NotFound, match="user"):
        Site("S").user("nobody")
