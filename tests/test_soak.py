"""The soak (benches/soak.py) in its short form, and the replayed-reply fault it injects.

``make soak`` runs 20 000 requests each way; here 300 direct and 300 through ``nomyo proxy``
run the same code: a router process with 20 % injected faults, killed with SIGKILL halfway and
restarted on its port with a new key; every request must end as its fault demands.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import nomyo
from nomyo.testing import DevRouter, Fault

BENCHES = Path(__file__).resolve().parent.parent / "benches"
if str(BENCHES) not in sys.path:
    sys.path.insert(0, str(BENCHES))

import soak  # noqa: E402

pytestmark = pytest.mark.timeout(300)


def _check(report: soak.Report) -> None:
    assert report.ok, report.render()
    assert sum(report.outcomes.values()) == soak.SHORT_REQUESTS
    # Most requests got their own reply; faults were injected, the router went down once.
    assert report.outcomes[("none", "ok")] >= soak.SHORT_REQUESTS // 2
    injected = {kind for kind in report.attempts if kind not in ("none", "stale_key")}
    assert len(injected) >= 5, report.attempts
    assert report.downtime > 0
    assert report.warm is not None and report.end is not None
    assert report.end.rss_kib <= report.warm.rss_kib * (1 + soak.RSS_GROWTH)


def test_soak_short_direct() -> None:
    report = soak.run_soak(soak.Config(requests=soak.SHORT_REQUESTS, seed=7))
    _check(report)


def test_soak_short_through_proxy() -> None:
    report = soak.run_soak(soak.Config(requests=soak.SHORT_REQUESTS, seed=8, through_proxy=True))
    _check(report)


def test_soak_reply_binding_refuses_replays_from_a_router_without_payload_ids() -> None:
    """A router that leaves ``_metadata.payload_id`` out (PROTOCOL.md does not require it):
    the client cannot tell a replayed reply by its payload id, and reply_binding="require" is
    what refuses it."""
    config = soak.Config(
        requests=150, seed=11, fault_rate=0.3, omit_payload_id=True, reply_binding="require"
    )
    report = soak.run_soak(config)
    assert report.ok, report.render()
    assert report.attempts["replay"] > 0, report.attempts
    assert report.outcomes[("replay", "SecurityError")] > 0


def test_soak_cli_short_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    assert soak.main(["--requests", "60", "--seed", "9", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["config"]["requests"] == 60
    assert data["violations"] == [] and data["findings"] == []


def _judged(result: str, kinds: list[str], tmp_path: Path) -> soak.Report:
    """Judge one request with ``result`` whose router attempts were ``kinds``."""
    config = soak.Config(requests=1)
    run = soak.Soak(config, router=None, run_id="t")  # type: ignore[arg-type]
    run.results[0] = result
    run.started[0], run.ended[0] = 10.0, 11.0
    run.down_at, run.up_at = 20.0, 21.0
    log = tmp_path / "faults.jsonl"
    log.write_text(
        "".join(
            json.dumps({"tag": run.tags[0], "kind": kind, "generation": 0, "t": 10.5}) + "\n"
            for kind in kinds
        )
    )
    report = soak.Report(config)
    soak.judge(run, log, report)
    return report


def test_judge_flags_an_accepted_replay_and_wrong_errors(tmp_path: Path) -> None:
    accepted = _judged(soak.WRONG_REPLY, ["replay"], tmp_path)
    assert not accepted.ok
    assert any("ACCEPTED a replayed reply" in f for f in accepted.findings)
    assert _judged("SecurityError", ["replay"], tmp_path).ok
    assert _judged("ok", ["429", "none"], tmp_path).ok
    # A connection error outside the router's down time, a retried security failure, a
    # request that hung: all violations.
    assert not _judged("APIConnectionError", ["none"], tmp_path).ok
    assert not _judged("ok", ["tamper", "none"], tmp_path).ok
    assert not _judged(soak.HUNG, ["slow"], tmp_path).ok
    assert not _judged("SecurityError", ["503"], tmp_path).ok


@pytest.mark.parametrize("transport", ["native", "httpx"])
def test_replayed_reply_is_refused(transport: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The router answers with the reply it sealed for this client's previous request: valid
    ciphertext for this key, but another request's answer. The client refuses it."""
    if transport == "httpx":
        monkeypatch.setenv("NOMYO_TRANSPORT", "httpx")
    with (
        DevRouter(key_bits=2048).run_in_thread() as handle,
        nomyo.SyncSecureChatCompletion(
            base_url=handle.url, allow_http=True, max_retries=0
        ) as client,
    ):
        first = client.create(model="m", messages=[{"role": "user", "content": "first"}])
        assert first["choices"][0]["message"]["content"] == "first"
        handle.router.faults.push(Fault(replay_reply=True))
        with pytest.raises(nomyo.SecurityError) as info:
            client.create(model="m", messages=[{"role": "user", "content": "second"}])
        assert "first" not in str(info.value) and "second" not in str(info.value)
        assert handle.router.requests[-1].fault == Fault(replay_reply=True)
        third = client.create(model="m", messages=[{"role": "user", "content": "third"}])
        assert third["choices"][0]["message"]["content"] == "third"


def test_replay_without_an_earlier_reply_sends_the_own_reply() -> None:
    with DevRouter(key_bits=2048).run_in_thread() as handle:
        handle.router.faults.push(Fault(replay_reply=True))
        with nomyo.SyncSecureChatCompletion(
            base_url=handle.url, allow_http=True, max_retries=0
        ) as client:
            only = client.create(model="m", messages=[{"role": "user", "content": "only"}])
        assert only["choices"][0]["message"]["content"] == "only"
        assert not handle.router.faults


def test_wrong_key_reply_fails_as_a_security_error_for_a_4096_bit_client() -> None:
    """The stranger key has the client key's size, so only the decryption fails (not the
    envelope's shape)."""
    with (
        DevRouter(key_bits=2048).run_in_thread() as handle,
        nomyo.SyncSecureChatCompletion(
            base_url=handle.url, allow_http=True, max_retries=0
        ) as client,
    ):
        handle.router.faults.push(Fault(wrong_key_reply=True))
        with pytest.raises(nomyo.SecurityError):
            client.create(model="m", messages=[{"role": "user", "content": "x"}])
        assert handle.router.requests[-1].fault == Fault(wrong_key_reply=True)
        # The client seals under the process-wide pair (no key of its own).
        assert client.client.private_key is None
        assert client.client.process_key.wait().private_key.key_size == 4096
