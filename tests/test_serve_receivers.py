"""`python -m iia.serve` subscribes the configured SSF receivers: one stream per receiver, and a
stream left by an earlier run (the outbox is durable) takes this run's configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from iia.antenna import Antenna
from iia.errors import ConfigurationError
from iia.serve import subscribe_receivers
from iia.settings import SsfReceiver


def _receiver(credential: Path, url: str = "http://127.0.0.1:9/events") -> SsfReceiver:
    return SsfReceiver(name="verify", endpoint_url=url, aud="https://verify.example",
                       events="ALL", authorization_file=str(credential))


def test_a_restart_updates_the_surviving_stream(tmp_path: Path) -> None:
    db, credential = tmp_path / "antenna.sqlite", tmp_path / "ssf-verify"
    credential.write_text("Bearer first-run\n")
    first = Antenna("https://antenna.example", db)
    subscribe_receivers(first, [_receiver(credential)])
    [(stream_id, config, _)] = first.store.streams()
    assert config["delivery"]["authorization_header"] == "Bearer first-run"
    first.stop()  # its push worker too, before the store closes

    credential.write_text("Bearer second-run\n")  # a new run, a new credential and URL
    second = Antenna("https://antenna.example", db)
    subscribe_receivers(second, [_receiver(credential, "http://127.0.0.1:10/events")])
    [(same_id, config, status)] = second.store.streams()  # still one stream
    assert same_id == stream_id and status == "enabled"
    assert config["delivery"]["authorization_header"] == "Bearer second-run"
    assert config["delivery"]["endpoint_url"] == "http://127.0.0.1:10/events"
    second.stop()


def test_an_empty_credential_file_is_refused(tmp_path: Path) -> None:
    db, credential = tmp_path / "antenna.sqlite", tmp_path / "ssf-verify"
    credential.write_text("  \n")
    antenna = Antenna("https://antenna.example", db)
    with pytest.raises(ConfigurationError, match="is empty"):
        subscribe_receivers(antenna, [_receiver(credential)])
    assert antenna.store.streams() == []  # no stream that would push without the header
    antenna.stop()
