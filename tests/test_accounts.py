"""Accounts of the team server and their command line (issue 18, items 1-3).

``fracture-qi users add NAME --role nurse|qi_lead|auditor|admin --password-stdin --manifest M``
is a contract; passwords are argon2id hashes, never stored or printed; every change and
every export is in the access log under whoever ran the command.
"""

from __future__ import annotations

import io

import pytest

from fracture_qi.accesslog import read_access_log
from fracture_qi.accounts import (
    MIN_PASSWORD_LENGTH,
    Permission,
    Role,
    add_user,
    allowed,
    authenticate,
    get_account,
    set_password,
    set_role,
)
from fracture_qi.cli.main import main
from fracture_qi.errors import AccountError, SignInError
from fracture_qi.store import open_store
from fracture_qi.store.schema import User

PASSWORD = "correct horse battery staple"


@pytest.fixture()
def site(tmp_path):
    (tmp_path / "data_manifest.yaml").write_text(
        "version: 1\nname: accounts\nsynthetic: true\ndatabase: sqlite:///fqi.db\n")
    engine = open_store(f"sqlite:///{tmp_path / 'fqi.db'}")
    yield tmp_path / "data_manifest.yaml", engine
    engine.dispose()


def run(argv, stdin: str = "", monkeypatch=None) -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return main(argv)


def test_users_add_reads_the_password_from_stdin_and_stores_only_a_hash(site, monkeypatch,
                                                                         capsys):
    manifest, engine = site
    assert run(["users", "add", "J.Smith", "--role", "nurse", "--password-stdin",
                "--manifest", str(manifest)], PASSWORD + "\n", monkeypatch) == 0
    assert "account j.smith created: nurse" in capsys.readouterr().out
    from fracture_qi.store.db import session_scope

    with session_scope(engine) as s:
        u = s.query(User).one()
        assert u.password_hash.startswith("$argon2id$") and PASSWORD not in u.password_hash
    assert authenticate(engine, "j.smith", PASSWORD).role == "nurse"
    with pytest.raises(SignInError):
        authenticate(engine, "j.smith", PASSWORD + "x")
    # refused, each with the reason and nothing created: taken, weak, unknown role, no stdin
    for argv, stdin, words in (
        (["users", "add", "j.smith", "--role", "nurse", "--password-stdin"], PASSWORD,
         "already exists"),
        (["users", "add", "k.jones", "--role", "nurse", "--password-stdin"], "short\n",
         f"at least {MIN_PASSWORD_LENGTH}"),
        (["users", "add", "k.jones", "--role", "nurse", "--password-stdin"], "\n",
         "no password on standard input"),
        (["users", "add", "bad name!", "--role", "nurse", "--password-stdin"], PASSWORD,
         "not usable"),
        (["users", "add", "k.jones", "--role", "nurse"], "", "--password-stdin"),
    ):
        assert run([*argv, "--manifest", str(manifest)], stdin, monkeypatch) == 2, argv
        err = capsys.readouterr().err
        assert words in err and PASSWORD not in err, (argv, err)
    with pytest.raises(SystemExit):  # argparse: only the four roles
        main(["users", "add", "x.y", "--role", "superuser", "--manifest", str(manifest)])
    assert [a.username for a in __import__("fracture_qi.accounts").accounts.list_accounts(
        engine)] == ["j.smith"]


def test_roles_disable_sign_on_accounts_and_the_log(site, monkeypatch, capsys):
    manifest, engine = site
    assert run(["users", "add", "a.jones", "--role", "nurse", "--sign-on", "--manifest",
                str(manifest)], "", monkeypatch) == 0
    assert run(["users", "add", "q.lead", "--role", "qi_lead", "--password-stdin", "--manifest",
                str(manifest)], PASSWORD, monkeypatch) == 0
    assert run(["users", "set-role", "q.lead", "--role", "auditor", "--manifest",
                str(manifest)], "", monkeypatch) == 0
    assert run(["users", "disable", "a.jones", "--manifest", str(manifest)], "",
               monkeypatch) == 0
    capsys.readouterr()
    assert run(["users", "list", "--manifest", str(manifest)], "", monkeypatch) == 0
    listing = capsys.readouterr().out
    assert "a.jones" in listing and "DISABLED" in listing and "sign-on" in listing
    assert "q.lead" in listing and "auditor" in listing
    assert get_account(engine, "q.lead").sessions_valid_after is not None  # sessions ended
    with pytest.raises(SignInError) as e:
        authenticate(engine, "a.jones", "anything at all here")
    assert e.value.reason == "no_password"
    log = read_access_log(engine)
    assert [e["action"] for e in log] == ["account_changed"] * 4
    assert all("@" in e["username"] and e["via"] == "command line" for e in log)
    # the access log export (the guardian's copy) is itself logged, the password never
    out = manifest.parent / "log.csv"
    assert run(["access-log", "--manifest", str(manifest), "--out", str(out)], "",
               monkeypatch) == 0
    text = out.read_text()
    assert text.count("account_changed") == 4 and PASSWORD not in text
    assert read_access_log(engine)[-1]["action"] == "export"
    assert run(["access-log", "--manifest", str(manifest), "--out", str(out), "--since",
                "yesterday"], "", monkeypatch) == 2


def test_password_rules_and_role_permissions(site):
    _, engine = site
    for bad, words in (("x" * (MIN_PASSWORD_LENGTH - 1), "at least"),
                       ("nurse.b-is-my-password", "user name"), ("aaaaaaaaaaaaaaa", "too few")):
        with pytest.raises(AccountError, match=words):
            add_user(engine, "nurse.b", "nurse", bad, by="test")
    add_user(engine, "nurse.b", "nurse", PASSWORD, by="test")
    with pytest.raises(AccountError, match="no user"):
        set_password(engine, "nobody", PASSWORD, by="test")
    with pytest.raises(AccountError, match="role"):
        set_role(engine, "nurse.b", "doctor", by="test")
    table = {r: {p for p in Permission if allowed(r, p)} for r in Role}
    assert table[Role.NURSE] == {Permission.ADJUDICATE, Permission.DASHBOARD}
    assert table[Role.QI_LEAD] == {Permission.DASHBOARD}
    assert Permission.ADJUDICATE not in table[Role.AUDITOR] | table[Role.ADMIN]
    assert not allowed(None, Permission.DASHBOARD) and not allowed("", Permission.DASHBOARD)
