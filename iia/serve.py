"""`python -m iia.serve` (`iia-serve`): the product as a deployment runs it (the docker-compose
`iia` service): the MCP server, the chat route and Antenna, configured by `IIA_*` variables
only (IDs, URLs, ports; the Anthropic key, if any, from `ANTHROPIC_API_KEY`). The variables
come from the environment, over an env file if one is named (`--env-file PATH` or
`IIA_ENV_FILE`; IDs and URLs only, see `iia.settings.load_env`).

`--console` adds the lab's security console (`iia.console`: every user's events, unauthenticated),
off by default, and only on a loopback `IIA_BIND`: any other address is refused at start-up.

    IIA_BIND (127.0.0.1 by default), IIA_MCP_PORT, IIA_CHAT_PORT, IIA_ANTENNA_PORT,
    IIA_CONSOLE_PORT (with --console); IIA_ANTENNA_URL (as receivers reach it), IIA_ANTENNA_DB
    (SQLite path), IIA_ANOMALY_RULES (a JSON file like fixtures/antenna/anomaly.json),
    IIA_SSF_RECEIVERS (a JSON list: name, endpoint_url, aud, events, authorization_file; Antenna
    creates one push stream for each at start, sending the header read from the receiver's
    file), plus the settings of `iia.identity`, `McpSettings`, `ChatSettings` and
    `AgentSettings`.

docs/real-services.md lists every setting.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import uvicorn

from iia.agent import model_client
from iia.antenna import SUPPORTED, AnomalyRules, Antenna, antenna_app
from iia.chat import ChatApp
from iia.console import console_app
from iia.errors import ConfigurationError
from iia.events import EventBus
from iia.identity import IdentitySettings, WorkloadIdentity
from iia.mcp_server import McpServer
from iia.net import listening_socket, server_config
from iia.settings import (
    AgentSettings,
    ChatSettings,
    McpSettings,
    SsfReceiver,
    load_env,
    ssf_receivers,
)

__all__ = ["check_console_bind", "main"]


def check_console_bind(host: str) -> None:
    """The security console is unauthenticated (it shows every user's events): it is served on
    a loopback address or not at all. (It also refuses non-loopback peers and Host names, but
    that is its second line, not a reason to publish it.)"""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigurationError(
            f"--console serves the unauthenticated security console, on a loopback address "
            f"only: IIA_BIND is {host!r}. Set IIA_BIND=127.0.0.1, or leave --console off")


def subscribe_receivers(antenna: Antenna, receivers: Sequence[SsfReceiver]) -> None:
    """Create the configured push streams, one per receiver name; a stream that survives from
    an earlier run (the outbox is durable) is updated to this run's configuration, so a
    receiver's new credential file or URL takes effect and its held events still go out."""
    existing = {c.get("description"): stream_id for stream_id, c, _ in antenna.store.streams()}
    for receiver in receivers:
        events = list(SUPPORTED) if receiver.events == "ALL" else list(receiver.events)
        body = {"delivery": {"method": "urn:ietf:rfc:8935",
                             "endpoint_url": receiver.endpoint_url,
                             "authorization_header": receiver.authorization_header()},
                "events_requested": events, "aud": receiver.aud,
                "description": f"subscription of {receiver.name}"}
        stream_id = existing.get(body["description"])
        if stream_id is None:
            antenna.create_stream(receiver.name, body)
        else:
            antenna.update_stream(receiver.name, {**body, "stream_id": stream_id})


async def run(env: Mapping[str, str], *, console: bool = False) -> None:
    host = env.get("IIA_BIND", "127.0.0.1")
    if console:
        check_console_bind(host)  # configuration errors first, before anything starts
    receivers = ssf_receivers(env)
    events = EventBus()
    identity = WorkloadIdentity(IdentitySettings.from_env(env), events=events)
    mcp = McpServer(McpSettings.from_env(env), identity, events)
    agent = AgentSettings.from_env(env)
    chat = ChatApp(ChatSettings.from_env(env), agent, events, model=lambda: model_client(agent))
    rules = Path(env["IIA_ANOMALY_RULES"]) if env.get("IIA_ANOMALY_RULES") else None
    antenna = Antenna(env["IIA_ANTENNA_URL"], env.get("IIA_ANTENNA_DB", "antenna.sqlite"),
                      events=events, rules=AnomalyRules.load(rules) if rules else None).start()
    for receiver in receivers:
        if receiver.name == "mcp":  # this very process: trust Antenna, demand the header
            mcp.ssf.subscribe(antenna.issuer, antenna.issuer + "/jwks",
                              receiver.authorization_header())
    subscribe_receivers(antenna, receivers)
    apps = [(mcp.app(), int(env.get("IIA_MCP_PORT", "8000")), True),
            (chat.app(), int(env.get("IIA_CHAT_PORT", "8001")), False),
            (antenna_app(antenna), int(env.get("IIA_ANTENNA_PORT", "8002")), False)]
    if console:
        apps.append((console_app(events, mcp.chain), int(env.get("IIA_CONSOLE_PORT", "8003")),
                     False))
    servers = [uvicorn.Server(server_config(app, lifespan=lifespan, log_level="info",
                                            graceful_shutdown_s=3))
               for app, _, lifespan in apps]
    try:
        await asyncio.gather(*(server.serve(sockets=[listening_socket(host, port)])
                               for server, (_, port, _) in zip(servers, apps, strict=True)))
    finally:
        antenna.stop()
        await chat.aclose()
        mcp.close()
        identity.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m iia.serve",
        description="the MCP server, chat route and Antenna of iia")
    parser.add_argument("--env-file", metavar="PATH",
                        help="KEY=VALUE settings (IDs and URLs only) under the environment; "
                             "default: $IIA_ENV_FILE, else none")
    parser.add_argument("--console", action="store_true",
                        help="also serve the lab's unauthenticated security console on "
                             "IIA_CONSOLE_PORT (loopback IIA_BIND only; default: off)")
    args = parser.parse_args(argv)
    try:
        env = load_env(args.env_file)
        asyncio.run(run(env, console=args.console))
    except ConfigurationError as exc:
        sys.exit(f"iia.serve: {exc}")


if __name__ == "__main__":
    main()
