"""The CLI's arguments, how a command finds its gateway and token, and its messages."""

from __future__ import annotations

import argparse
import io
import socket
import ssl
import urllib.error
from pathlib import Path

import pytest

from gateway.api.kubeconfig import exec_user
from herdgate import cli, login
from herdgate.client import (
    ApiError,
    BadServerUrl,
    NoKubeconfigsEndpoint,
    Unreachable,
    Untrusted,
    classify,
    normalize_server,
)
from herdgate.commands import auth
from herdgate.commands.common import (
    Failure,
    Progress,
    UsageError,
    confirm,
    explain,
    read_secret,
    resolve,
)
from herdgate.contexts import Context, Contexts, save

OURS = {
    "login", "logout", "context", "cluster", "user", "token", "binding", "project",
    "roletemplate", "kubeconfig",
}  # fmt: skip


def subcommands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], str, argparse.ArgumentParser]]:
    """Every (sub)command under ``parser``: its path, its one-line help, its parser."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                found.append(((*path, name), helps.get(name, ""), sub))
                found.extend(subcommands(sub, (*path, name)))
    return found


def test_every_command_has_a_plain_one_line_help() -> None:
    commands = [c for c in subcommands(cli.build_parser()) if c[0][0] in OURS]
    assert len(commands) > 35
    for path, help_text, sub in commands:
        assert help_text, path
        assert "\n" not in help_text and "`" not in help_text, path
        assert "`" not in (sub.description or ""), path
        sub.format_help()  # renders


def parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(list(argv))


def test_kubectls_exec_plugin_arguments_still_mean_the_plugin() -> None:
    """Exactly what generated kubeconfigs run (gateway.api.kubeconfig.exec_user)."""
    user = exec_user("https://gw.example:8443", "ldap", ["c-abcde", "c-fghij"])["exec"]
    assert user["command"] == "herdgate"
    args = parse(*user["args"])
    assert auth.is_plugin_call(args, {})
    assert auth.is_plugin_call(args, {"KUBERNETES_EXEC_INFO": "{}"})
    assert (args.server, args.provider, args.cluster) == (
        "https://gw.example:8443",
        "ldap",
        ["c-abcde", "c-fghij"],
    )
    # kubectl runs it with KUBERNETES_EXEC_INFO set even without --cluster
    bare = parse("login", "--server", "https://gw", "--username", "u")
    assert auth.is_plugin_call(bare, {"KUBERNETES_EXEC_INFO": "{}"})
    assert not auth.is_plugin_call(bare, {})
    # the plugin's own flags mean the plugin, as they always did
    for flag in (["--ca-file", "ca.crt"], ["--cache-dir", "/c"], ["--logout"]):
        assert auth.is_plugin_call(parse("login", "--server", "https://gw", *flag), {})


def test_the_plugin_keeps_every_flag_it_had() -> None:
    """Every option of the plugin's own parser (herdgate.login.add_parser) parses to the
    same values here."""
    old = argparse.ArgumentParser()
    login.add_parser(old.add_subparsers())
    plugin_parser = subcommands(old)[0][2]
    argv = [
        "login", "--server", "https://gw", "--provider", "openldap", "--cluster", "c-1",
        "--username", "bob", "--ca-file", "/ca.crt", "--cache-dir", "/cache", "--logout",
    ]  # fmt: skip
    before = vars(plugin_parser.parse_args(argv[1:]))
    after = vars(parse(*argv))
    assert {k: after[k] for k in before if k != "run"} == {
        k: v for k, v in before.items() if k != "run"
    }
    defaults_before = vars(plugin_parser.parse_args(["--server", "https://gw"]))
    defaults_after = vars(parse("login", "--server", "https://gw"))
    for key, value in defaults_before.items():
        if key != "run":
            assert defaults_after[key] == value, key


def test_a_persons_login_is_everything_else() -> None:
    for argv in (
        ["login", "https://gw:8443"],
        ["login", "--server", "https://gw:8443", "--username", "admin", "--password-stdin"],
        ["login", "gw:8443", "--token", "token-x:y", "--context", "ci"],
        ["login", "gw:8443", "--ca", "ca.crt", "--provider", "ldap"],
        ["login"],
    ):
        assert not auth.is_plugin_call(parse(*argv), {}), argv


def test_the_plugin_refuses_a_persons_flags(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse("login", "--server", "https://gw", "--cluster", "c-1", "--insecure")
    assert auth.run_plugin(args) == 2
    assert "--insecure: not an option of kubectl's credential plugin" in capsys.readouterr().err
    args = parse("login", "--cluster", "c-1")
    assert auth.run_plugin(args) == 2
    assert "needs --server" in capsys.readouterr().err


@pytest.fixture
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "herdgate.json"
    monkeypatch.setenv("HERDGATE_CONFIG", str(path))
    for name in ("HERDGATE_URL", "HERDGATE_API_TOKEN", "HERDGATE_CONTEXT", "HERDGATE_CA"):
        monkeypatch.delenv(name, raising=False)
    return path


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["kubeconfig"], "name the clusters, or give --all"),
        (["kubeconfig", "dev", "--all"], "name the clusters, or give --all"),
        (["kubeconfig", "dev", "--ttl", "soon"], "--ttl"),
        (["cluster", "wait", "dev", "--timeout", "0s"], "--timeout must be more than 0"),
        (["token", "delete"], "give token ids, or --user"),
        (["context", "use", "nowhere"], "no context named 'nowhere'"),
        (["cluster", "list", "--context", "nowhere"], "no context named 'nowhere'"),
        (["cluster", "list", "--server", "http://gw"], "must start with https://"),
    ],
)
def test_usage_errors_exit_2_before_any_request(
    argv: list[str], message: str, config_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_argparse_errors_exit_2(config_home: Path) -> None:
    for argv in (
        ["cluster"],
        ["cluster", "list", "--bogus"],
        ["binding", "create", "--cluster", "x"],
    ):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 2


def test_without_a_login_every_command_says_to_log_in(
    config_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["cluster", "list"]) == 1
    assert "herdgate login https://GATEWAY:8443" in capsys.readouterr().err
    assert cli.main(["cluster", "list", "--server", "gw.example:8443"]) == 1
    assert "run: herdgate login https://gw.example:8443" in capsys.readouterr().err


def test_context_list_and_use(config_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    contexts = Contexts()
    contexts.put(Context("a", "https://a", token="token-a:secret-a", username="ann"))
    contexts.put(Context("b", "https://b", insecure=True))
    save(config_home, contexts)
    assert cli.main(["context", "list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "CURRENT   NAME   SERVER      USER   CA         LOGGED-IN",
        "          a      https://a   ann    system     yes",
        "*         b      https://b          insecure   no",
    ]
    assert cli.main(["context", "use", "a"]) == 0
    assert cli.main(["context", "list", "-o", "json"]) == 0
    out = capsys.readouterr().out
    assert "secret-a" not in out and '"current": true' in out


# -- which gateway, which token ----------------------------------------------------------


def two_contexts() -> Contexts:
    contexts = Contexts()
    contexts.put(Context("ci", "https://ci:8443", ca_pem="CA-CI", token="token-ci:x"))
    contexts.put(Context("gw", "https://gw:8443", ca_pem="CA-GW", token="token-gw:x"))
    return contexts


def ns(**kw: object) -> argparse.Namespace:
    values: dict[str, object] = {
        "context": None, "server": None, "token": None, "ca": None, "insecure": False,
    }  # fmt: skip
    values.update(kw)
    return argparse.Namespace(**values)


def test_the_current_context_by_default_then_flags_then_environment() -> None:
    contexts = two_contexts()
    client, _ = resolve(ns(), contexts, {})
    assert (client.server, client.token, client.trust.ca_pem) == (
        "https://gw:8443", "token-gw:x", "CA-GW",
    )  # fmt: skip
    client, _ = resolve(ns(), contexts, {"HERDGATE_CONTEXT": "ci"})
    assert client.token == "token-ci:x"
    client, _ = resolve(ns(context="ci"), contexts, {"HERDGATE_CONTEXT": "gw"})
    assert client.token == "token-ci:x"
    client, _ = resolve(ns(token="token-flag:y"), contexts, {"HERDGATE_API_TOKEN": "token-env:z"})
    assert client.token == "token-flag:y"
    client, _ = resolve(ns(), contexts, {"HERDGATE_API_TOKEN": "token-env:z"})
    assert client.token == "token-env:z" and client.server == "https://gw:8443"


def test_a_contexts_token_never_goes_to_another_server() -> None:
    contexts = two_contexts()
    with pytest.raises(Failure, match="not logged in to https://elsewhere:8443"):
        resolve(ns(server="elsewhere:8443"), contexts, {})
    client, context = resolve(ns(server="https://ci:8443"), contexts, {})
    assert context is not None and context.name == "ci" and client.token == "token-ci:x"
    client, context = resolve(ns(server="elsewhere:8443", token="t"), contexts, {})
    assert context is None and client.trust.ca_pem == "" and client.token == "t"
    with pytest.raises(UsageError, match="is for https://gw:8443"):
        resolve(ns(context="gw", server="https://ci:8443"), contexts, {})


def test_insecure_only_when_asked_for() -> None:
    contexts = two_contexts()
    assert not resolve(ns(), contexts, {})[0].trust.insecure
    assert resolve(ns(insecure=True), contexts, {})[0].trust.insecure


def test_a_ca_file_from_a_flag_or_the_environment(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n")
    contexts = two_contexts()
    assert resolve(ns(ca=str(ca)), contexts, {})[0].trust.ca_pem.startswith("-----BEGIN")
    assert resolve(ns(), contexts, {"HERDGATE_CA": str(ca)})[0].trust.ca_pem.startswith("-----")
    with pytest.raises(UsageError, match="cannot read the CA file"):
        resolve(ns(ca=str(tmp_path / "none")), contexts, {})
    (tmp_path / "bad").write_text("hello")
    with pytest.raises(UsageError, match="holds no PEM certificate"):
        resolve(ns(ca=str(tmp_path / "bad")), contexts, {})


@pytest.mark.parametrize(
    ("typed", "server"),
    [
        ("gw.example", "https://gw.example"),
        ("https://gw.example:8443/", "https://gw.example:8443"),
        ("HTTPS://GW.example:8443", "https://gw.example:8443"),
        ("https://[::1]:8443", "https://[::1]:8443"),
    ],
)
def test_server_urls(typed: str, server: str) -> None:
    assert normalize_server(typed) == server


@pytest.mark.parametrize(
    "typed", ["http://gw", "https://", "https://u:p@gw", "https://gw/v3", "https://gw:99999"]
)
def test_bad_server_urls(typed: str) -> None:
    with pytest.raises(BadServerUrl):
        normalize_server(typed)


# -- messages ----------------------------------------------------------------------------


def test_errors_say_what_to_do() -> None:
    server = "https://gw:8443"
    assert "run herdgate login" not in explain(ApiError(401, "must authenticate"))[0]
    assert "herdgate login" in explain(ApiError(401, "must authenticate"))[1]
    assert "administrator" in explain(ApiError(403, "only administrators may do this"))[1]
    assert "owner" in explain(ApiError(403, "only owners of cluster dev may do this"))[1]
    assert (
        "is the gateway running at https://gw:8443?"
        in explain(Unreachable(server, "refused", "connection refused"))[1]
    )
    message, hint = explain(Untrusted(server, "unable to get local issuer certificate", False))
    assert "not trusted" in message and "--ca-checksum" in hint and "--ca" in hint
    message, hint = explain(Untrusted(server, "Hostname mismatch", True))
    assert "does not name that host" in message and "server_url" in hint
    assert "upgrade" in explain(NoKubeconfigsEndpoint(server))[0]
    assert explain(ApiError(422, "name \x1b[2J must be lowercase"))[0] == (
        "refused: name \\x1b[2J must be lowercase (HTTP 422)"
    )


def test_network_failures_are_classified() -> None:
    server = "https://gw"
    refused = classify(server, urllib.error.URLError(ConnectionRefusedError(111, "x")), 30)
    assert isinstance(refused, Unreachable) and refused.kind == "refused"
    dns = classify(server, urllib.error.URLError(socket.gaierror(-2, "Name unknown")), 30)
    assert isinstance(dns, Unreachable) and dns.kind == "resolve"
    slow = classify(server, TimeoutError(), 30)
    assert isinstance(slow, Unreachable) and "30s" in slow.detail
    cert = ssl.SSLCertVerificationError(1, "certificate verify failed")
    cert.verify_message = "self-signed certificate"
    untrusted = classify(server, urllib.error.URLError(cert), 30)
    assert isinstance(untrusted, Untrusted) and not untrusted.hostname_mismatch


def test_no_terminal_no_confirmation_no_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("a-long-password\nsecond\n"))
    with pytest.raises(UsageError, match="without --yes"):
        confirm("Delete?", False, "delete a cluster")
    confirm("Delete?", True, "delete a cluster")
    assert read_secret(True, "") == "a-long-password"
    assert read_secret(True, "") == "second"
    with pytest.raises(UsageError, match="no password on standard input"):
        read_secret(True, "")
    with pytest.raises(UsageError, match="--password-stdin"):
        read_secret(False, "password: ")


def test_progress_waits_a_second_then_says_what_changes() -> None:
    now = [0.0]
    stream = io.StringIO()
    progress = Progress(stream, lambda: now[0])
    progress.show("waiting: pending")
    assert stream.getvalue() == ""
    now[0] = 1.5
    progress.show("waiting: pending")
    progress.show("waiting: pending")
    now[0] = 3.0
    progress.show("waiting: unavailable")
    progress.done()
    assert stream.getvalue() == "waiting: pending\nwaiting: unavailable\n"


def test_a_missing_route_is_told_from_a_missing_cluster() -> None:
    from herdgate.client import Answer, _config_text, _no_route, api_error

    router = Answer(404, b'{"type":"error","status":404,"code":"","message":"Not Found"}', "")
    handler = Answer(404, b'{"type":"error","status":404,"message":"cluster c-x not found"}', "")
    assert _no_route(router) and _no_route(Answer(404, b"<html>", "text/html"))
    assert not _no_route(handler)
    assert api_error(handler, "POST").message == "cluster c-x not found"
    assert api_error(Answer(502, b"", ""), "GET").message == "Bad Gateway"
    assert _config_text({"config": "apiVersion: v1\n"}, "x") == "apiVersion: v1\n"
    with pytest.raises(ApiError, match="holds no kubeconfig"):
        _config_text({"type": "error"}, "x")
