"""``nomyo._known_hosts``, trust on first use, against a real server: a broken or foreign
file refuses instead of starting over, ``keys trust`` refuses a non-fingerprint, the hint of
a changed key names the file. (Written for issue 18, finding 3, and the security review;
its findings 4-6 moved to test_native, test_cli_chat and test_transport.)"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_support import cli

import nomyo
from nomyo._known_hosts import KnownHosts, normalise_url
from nomyo.testing import DevCertificates, DevRouter, RouterThread, make_test_certificates

PAYLOAD = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def router() -> Iterator[RouterThread]:
    with DevRouter(key_bits=2048).run_in_thread() as handle:
        yield handle


def send(url: str, **options: Any) -> dict[str, Any]:
    with nomyo.SyncSecureCompletionClient(url, allow_http=True, **options) as client:
        client.generate_keys()
        return dict(client.send_secure_request(dict(PAYLOAD), "review-security"))


# -- 3. known_hosts ------------------------------------------------------------------------


def test_unparseable_entry_refuses_instead_of_starting_over(
    router: RouterThread, tmp_path: Path
) -> None:
    hosts = tmp_path / "known_hosts"
    real = router.router.public_key.fingerprint()
    for broken in (f"{router.url} sha256:0123", f"{router.url}", f"{router.url} {real} extra"):
        hosts.write_text(f"# mine\n{broken}\n")
        hosts.chmod(0o600)
        with pytest.raises(nomyo.SecurityError, match="does not parse") as caught:
            send(router.url, known_hosts=hosts)
        assert f"--known-hosts {hosts}" in str(caught.value)
        assert hosts.read_text() == f"# mine\n{broken}\n"  # not rewritten, not reset
        assert KnownHosts(hosts).entries() == {router.url: set()}


def test_line_naming_no_router_refuses_every_router(router: RouterThread, tmp_path: Path) -> None:
    hosts = tmp_path / "known_hosts"
    hosts.write_text("garbage-without-url\n")
    hosts.chmod(0o600)
    with pytest.raises(nomyo.SecurityError, match="line 1"):
        send(router.url, known_hosts=hosts)
    with pytest.raises(nomyo.SecurityError, match="line 1"):
        KnownHosts(hosts).trust(router.url, router.router.public_key.fingerprint())


def test_broken_entries_of_other_routers_survive_a_first_use(
    router: RouterThread, tmp_path: Path
) -> None:
    hosts = tmp_path / "known_hosts"
    hosts.write_text("https://other.example not-a-fingerprint\n")
    hosts.chmod(0o600)
    send(router.url, known_hosts=hosts)  # first use of this router: remembered
    entries = KnownHosts(hosts).entries()
    assert entries == {
        router.url: {router.router.public_key.fingerprint()},
        "https://other.example": set(),
    }
    assert "https://other.example not-a-fingerprint" in hosts.read_text()


def test_keys_trust_refuses_a_non_fingerprint(router: RouterThread, tmp_path: Path) -> None:
    hosts = tmp_path / "known_hosts"
    for bad in ("", "anything", "sha256:abcd", "md5:" + "0" * 32):
        done = cli(
            "keys", "trust", "--base-url", router.url, "--fingerprint", bad,
            "--known-hosts", str(hosts),
        )  # fmt: skip
        assert done.returncode == 2, (bad, done.stdout, done.stderr)
        assert "fingerprint" in done.stderr
        assert not hosts.exists()
    with pytest.raises(nomyo.ConfigurationError):
        KnownHosts(hosts).trust(router.url, "")
    upper = router.router.public_key.fingerprint().upper().replace("SHA256:", "")
    done = cli(
        "keys", "trust", "--base-url", router.url, "--fingerprint", upper,
        "--known-hosts", str(hosts),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert KnownHosts(hosts).entries() == {router.url: {router.router.public_key.fingerprint()}}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file to another user")
def test_known_hosts_of_another_user_is_refused(router: RouterThread, tmp_path: Path) -> None:
    hosts = tmp_path / "known_hosts"
    hosts.write_text(f"{router.url} {router.router.public_key.fingerprint()}\n")
    hosts.chmod(0o600)
    os.chown(hosts, 65534, 65534)
    with pytest.raises(nomyo.SecurityError, match="another user"):
        send(router.url, known_hosts=hosts)


def test_group_writable_known_hosts_is_refused(router: RouterThread, tmp_path: Path) -> None:
    hosts = tmp_path / "known_hosts"
    hosts.write_text(f"{router.url} {router.router.public_key.fingerprint()}\n")
    hosts.chmod(0o620)
    with pytest.raises(nomyo.SecurityError, match="writable by group"):
        send(router.url, known_hosts=hosts)


def test_changed_key_hint_names_the_file_in_use(tmp_path: Path) -> None:
    """Issue 19, item 9: following the hint fixes the file that was read, not the default."""
    hosts = tmp_path / "my hosts"
    with DevRouter(key_bits=2048).run_in_thread() as handle:
        send(handle.url, known_hosts=hosts)
        new = handle.router.rotate_key()
        with pytest.raises(nomyo.SecurityError) as caught:
            send(handle.url, known_hosts=hosts)
        message = str(caught.value)
        hint = message.split("accept it with: ", 1)[1]
        assert f"--known-hosts '{hosts}'" in hint
        args = shlex.split(hint)
        assert args[:3] == ["nomyo", "keys", "trust"]
        env = {"XDG_CONFIG_HOME": str(tmp_path / "elsewhere")}  # the default file is elsewhere
        done = cli(*args[1:], env=env)
        assert done.returncode == 0, done.stderr
        assert not (tmp_path / "elsewhere").exists()
        send(handle.url, known_hosts=hosts)
        assert KnownHosts(hosts).entries() == {handle.url: {new.fingerprint()}}


# -- 6. injected transports must verify -------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCertificates:
    return make_test_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def https_router(certs: DevCertificates) -> Iterator[RouterThread]:
    """A router whose certificate no default trust store accepts (a stranger's)."""
    router = DevRouter(key_bits=2048, tls_cert=certs.cert, tls_key=certs.key)
    with router.run_in_thread() as handle:
        yield handle


def test_known_hosts_normalises_urls_and_checks_its_mode(tmp_path: Path) -> None:
    assert normalise_url("HTTPS://Router.Example:443/") == "https://router.example"
    assert normalise_url("http://[::1]:8080/api/") == "http://[::1]:8080/api"
    hosts = KnownHosts(tmp_path / "known_hosts")
    hosts.check("https://router.example", "sha256:" + "a" * 64)
    hosts.check("HTTPS://ROUTER.EXAMPLE:443", "sha256:" + "a" * 64)
    with pytest.raises(nomyo.SecurityError, match="changed"):
        hosts.check("https://router.example:443/", "sha256:" + "b" * 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["known_hosts", "known_hosts.lock"]
    (tmp_path / "known_hosts").chmod(0o666)
    with pytest.raises(nomyo.SecurityError, match="chmod 600"):
        hosts.entries()
