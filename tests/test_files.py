"""Files beside user data (second security review, findings 6 and 7; issue 24).

Replays, as root acting as another user with ``setpriv`` (``nobody``) in a shared directory:
a symlink planted as the known-hosts lock file (nomyo created the file it pointed to), and a
key pair planted in a shared key directory (nomyo sealed to it). Both are refused now, and so
is every other file nomyo opens there through a symlink, owned by another user or writable
by group or others; ``nomyo._files`` is the one place these rules live.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from other_user import NOBODY, as_nobody, can_act_as_nobody, nobody_runs_this_python

import nomyo
from nomyo import _core
from nomyo._files import (
    UnsafeFileError,
    check_directory,
    open_checked,
    open_lock,
    read_text,
    replace_file,
)
from nomyo._keys import save_key_pair
from nomyo._known_hosts import KnownHosts
from nomyo.testing import DevRouter, RouterThread

FINGERPRINT = "sha256:" + "ab" * 32
URL = "https://router.example"
as_root = pytest.mark.skipif(
    not can_act_as_nobody(), reason="needs root and setpriv (util-linux) to act as another user"
)
posix = pytest.mark.skipif(os.name != "posix", reason="POSIX owners and modes")


def run_as_nobody(*command: str) -> None:
    """Run ``command`` as the user nobody (the other local user of the review)."""
    subprocess.run(as_nobody(*command), check=True, capture_output=True, timeout=30)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every local user may write to (mode 0777, no sticky bit)."""
    path = Path(tempfile.mkdtemp(prefix="nomyo-shared-", dir="/tmp"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- the helper ------------------------------------------------------------------------------


@posix
def test_the_helper_refuses_symlinks_and_open_modes(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.write_text("x")
    real.chmod(0o600)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(UnsafeFileError, match="symbolic link"):
        read_text(link)
    with pytest.raises(UnsafeFileError, match="symbolic link"), open_lock(link):
        pass
    assert read_text(real) == "x"
    real.chmod(0o620)
    with pytest.raises(UnsafeFileError, match="chmod 600"):
        read_text(real)
    real.chmod(0o640)
    assert read_text(real) == "x"  # readable is fine unless private
    with pytest.raises(UnsafeFileError, match="readable by group"):
        read_text(real, private=True)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(UnsafeFileError, match="not a regular file"):
        open_checked(fifo)  # returns at once: O_NONBLOCK, then the type check
    with pytest.raises(FileNotFoundError):
        read_text(tmp_path / "missing")
    created = tmp_path / "new.lock"
    with open_lock(created):
        pass
    assert stat.S_IMODE(created.stat().st_mode) == 0o600
    (tmp_path / "open").mkdir(mode=0o700)
    (tmp_path / "open").chmod(0o770)
    with pytest.raises(UnsafeFileError, match="chmod 700"):
        check_directory(tmp_path / "open")
    (tmp_path / "open").chmod(0o1777)  # sticky: only a file's owner may replace it
    check_directory(tmp_path / "open")


@posix
def test_replace_file_replaces_a_symlink_instead_of_following_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    target = tmp_path / "receipts"
    target.symlink_to(victim)
    replace_file(target, b"new")
    assert victim.read_text() == "untouched"
    assert not target.is_symlink() and read_text(target, private=True) == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["receipts", "victim"]


# -- 6. known_hosts and its lock -------------------------------------------------------------


@as_root
def test_planted_lock_symlink_is_refused(shared_dir: Path) -> None:
    """The review: ``known_hosts.lock`` -> a file of the victim's choosing was created."""
    hosts = shared_dir / "known_hosts"
    victim = shared_dir / "victims_file"  # does not exist: the link would create it
    run_as_nobody("ln", "-s", str(victim), str(shared_dir / "known_hosts.lock"))
    assert os.lstat(shared_dir / "known_hosts.lock").st_uid == NOBODY
    with pytest.raises(nomyo.SecurityError, match="symbolic link"):
        KnownHosts(hosts).trust(URL, FINGERPRINT)
    with pytest.raises(nomyo.SecurityError, match="symbolic link"):
        KnownHosts(hosts).check(URL, FINGERPRINT)
    assert not victim.exists()
    assert not hosts.exists()


@as_root
def test_planted_known_hosts_symlink_is_refused(shared_dir: Path) -> None:
    theirs = shared_dir / "theirs"
    run_as_nobody("sh", "-c", f"echo '{URL} {FINGERPRINT}' > {theirs} && chmod 600 {theirs}")
    run_as_nobody("ln", "-s", str(theirs), str(shared_dir / "known_hosts"))
    with pytest.raises(nomyo.SecurityError, match="symbolic link"):
        KnownHosts(shared_dir / "known_hosts").entries()
    # And their own file, named directly, is another user's.
    with pytest.raises(nomyo.SecurityError, match="another user"):
        KnownHosts(theirs).entries()


@posix
def test_own_known_hosts_still_works(tmp_path: Path) -> None:
    hosts = KnownHosts(tmp_path / "known_hosts")
    hosts.check(URL, FINGERPRINT)
    assert hosts.entries() == {URL: {FINGERPRINT}}
    assert stat.S_IMODE((tmp_path / "known_hosts.lock").stat().st_mode) == 0o600


# -- 7. keys ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def router() -> Iterator[RouterThread]:
    with DevRouter(key_bits=2048).run_in_thread() as handle:
        yield handle


def complete(router: RouterThread, key_dir: Path) -> str | None:
    """One completion through a client whose key pair lives in ``key_dir``."""
    with nomyo.SyncSecureChatCompletion(
        base_url=router.url, allow_http=True, key_dir=key_dir
    ) as chat:
        reply = chat.create("m", [{"role": "user", "content": "through my own key"}])
    content = reply["choices"][0]["message"]["content"]
    return content if isinstance(content, str) else None


def _key_pair(directory: Path) -> _core.PrivateKey:
    key = _core.PrivateKey.generate(2048)
    save_key_pair(key, directory)
    return key


@as_root
def test_key_pair_planted_in_a_shared_key_dir_is_refused(
    router: RouterThread, shared_dir: Path
) -> None:
    """The review: a process given a shared key_dir sealed to the planted pair."""
    if not nobody_runs_this_python():
        pytest.skip(
            f"the user nobody cannot start {sys.executable} (a directory it needs is closed)"
        )
    key_dir = shared_dir / "keys"
    run_as_nobody(
        sys.executable,
        "-c",
        "import sys; from nomyo import _core; from nomyo._keys import save_key_pair; "
        "save_key_pair(_core.PrivateKey.generate(2048), sys.argv[1])",
        str(key_dir),
    )
    assert key_dir.stat().st_uid == NOBODY
    with pytest.raises(nomyo.KeyFormatError, match=r"key directory .* belongs to another user"):
        complete(router, key_dir)
    # Their key file moved into a directory of ours is refused as theirs, with the fix.
    ours = shared_dir / "ours"
    ours.mkdir(mode=0o700)
    shutil.copy2(key_dir / "private_key.pem", ours / "private_key.pem")
    os.chown(ours / "private_key.pem", NOBODY, NOBODY)
    client = nomyo.SecureCompletionClient()
    with pytest.raises(nomyo.KeyFormatError, match=r"belongs to another user .*chown"):
        client.load_keys(ours / "private_key.pem")
    assert client.private_key is None


@posix
def test_open_key_dirs_and_files_are_refused_with_the_fix(tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    key = _key_pair(key_dir)
    private, public = key_dir / "private_key.pem", key_dir / "public_key.pem"
    client = nomyo.SecureCompletionClient()
    key_dir.chmod(0o770)
    with pytest.raises(nomyo.KeyFormatError, match=f"chmod 700 {key_dir}"):
        client.load_keys(private)
    key_dir.chmod(0o700)
    private.chmod(0o620)
    with pytest.raises(nomyo.KeyFormatError, match="writable by group or others"):
        client.load_keys(private, allow_readable=True)
    private.chmod(0o600)
    public.chmod(0o666)
    with pytest.raises(nomyo.KeyFormatError, match=r"public key file .*chmod 600"):
        client.load_keys(private, public)
    public.chmod(0o644)
    client.load_keys(private, public)
    assert client.private_key is not None
    assert client.private_key.public_key() == key.public_key()


@posix
def test_key_files_are_never_read_through_a_symlink(router: RouterThread, tmp_path: Path) -> None:
    real = tmp_path / "real"
    _key_pair(real)
    links = tmp_path / "links"
    links.mkdir(mode=0o700)
    (links / "private_key.pem").symlink_to(real / "private_key.pem")
    (links / "public_key.pem").symlink_to(real / "public_key.pem")
    client = nomyo.SecureCompletionClient()
    with pytest.raises(nomyo.KeyFormatError):
        client.load_keys(links / "private_key.pem")
    with pytest.raises(nomyo.KeyFormatError, match="symbolic link"):
        client.load_keys(real / "private_key.pem", links / "public_key.pem")
    with pytest.raises(nomyo.KeyFormatError, match="symbolic link"):
        complete(router, links)
    assert complete(router, real) == "through my own key"
