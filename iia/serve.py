"""`python -m iia.serve` (`iia-serve`): the product as a deployment runs it (the docker-compose
`iia` service): the MCP server, the chat route and Antenna, configured by `IIA_*` variables
only (IDs, URLs, ports; the Anthropic key, if any, from `ANTHROPIC_API_KEY`). The variables
come from the environment, over an env file if one is named (`--env-file PATH` or
`IIA_ENV_FILE`; IDs and URLs only, see `iia.settings.load_env`).

`--console` adds the lab's security console (`iia.console`: every user's events, unauthenticated),
off by default, and only on a loopback address: any other is refused at start-up.

A supervisor may hand the listening sockets over (systemd socket activation, `iia.net.
inherited_sockets`: `LISTEN_FDS`, `LISTEN_FDNAMES` with the names `mcp`, `chat`, `antenna`,
`console`, `LISTEN_PID`); a socket not handed over is bound from the settings below.

    IIA_BIND (127.0.0.1 by default), IIA_MCP_PORT, IIA_CHAT_PORT, IIA_ANTENNA_PORT,
    IIA_CONSOLE_PORT (with --console); IIA_ANTENNA_URL (as receivers reach it), IIA_ANTENNA_DB
    (SQLite path), IIA_ANTENNA_MANAGEMENT_JWKS_URI (the IdP's keys for the management tokens
    of outside receivers; IIA_VERIFY_ISSUER's /jwks by default), IIA_ANOMALY_RULES (a JSON
    file like fixtures/antenna/anomaly.json),
    IIA_SSF_RECEIVERS (a JSON list: name, endpoint_url, aud, events, authorization_file; Antenna
    creates one push stream for each at start, sending the header read from the receiver's
    file), IIA_AUDIT_DIR (the durable audit trail: every event, with its SET jtis, appended to
    `events.jsonl` there; `iia.audit_trail` for its rotation and fsync settings), plus the
    settings of `iia.identity`, `McpSettings`, `ChatSettings` and `AgentSettings`.

The servers run on uvloop's event loop and httptools' HTTP parser where they are installed
(`iia.net.run_loop`, `iia.net.server_config`).

docs/real-services.md lists every setting.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import uvicorn

from iia.agent import model_client
from iia.antenna import SUPPORTED, AnomalyRules, Antenna, OAuthManagement, antenna_app
from iia.antenna.event_types import FOR_BUS_EVENT
from iia.audit_trail import EVENTS, AuditSettings, record_events
from iia.chat import ChatApp
from iia.console import console_app
from iia.errors import ConfigurationError
from iia.events import EventBus
from iia.identity import IdentitySettings, WorkloadIdentity
from iia.mcp_server import McpServer
from iia.net import inherited_sockets, listening_socket, run_loop, server_config
from iia.settings import (
    AgentSettings,
    AntennaBounds,
    ChatSettings,
    McpSettings,
    SsfReceiver,
    load_env,
    ssf_receivers,
)

__all__ = ["SOCKETS", "check_console_bind", "check_sockets", "main", "run"]

# the sockets this process serves, by the name a supervisor hands each over with
SOCKETS = ("mcp", "chat", "antenna", "console")


def check_console_bind(host: str, *, handed_over: bool = False) -> None:
    """The security console is unauthenticated (it shows every user's events): it is served on
    a loopback address or not at all. (It also refuses non-loopback peers and Host names, but
    that is its second line, not a reason to publish it.) `handed_over`: `host` is the address
    of the socket a supervisor handed over, not IIA_BIND."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        if handed_over:
            raise ConfigurationError(
                f"--console serves the unauthenticated security console, on a loopback "
                f"address only: the handed-over console socket is bound to {host!r}. Hand "
                f"over a socket bound to 127.0.0.1, or leave --console off")
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


def _served(console: bool) -> tuple[str, ...]:
    return SOCKETS if console else SOCKETS[:-1]


def check_sockets(env: Mapping[str, str], handed: Mapping[str, socket.socket],
                  console: bool) -> None:
    """Before anything starts: a handed-over socket this process would not serve is a
    configuration error (a supervisor's mistake should not go unnoticed), and the console's
    socket, handed over or bound on IIA_BIND, must be a loopback one."""
    served = _served(console)
    extra = sorted(set(handed) - set(served))
    if extra:
        raise ConfigurationError(
            f"LISTEN_FDNAMES hands over {', '.join(extra)}, which this process does not serve "
            f"(it serves {', '.join(served)}{'' if console else '; console only with --console'})")
    if console:
        if "console" in handed:
            check_console_bind(handed["console"].getsockname()[0], handed_over=True)
        else:
            check_console_bind(env.get("IIA_BIND", "127.0.0.1"))


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    setting = f"IIA_{name.upper()}_PORT"
    raw = env.get(setting) or str(default)
    if not raw.isdigit() or not 0 <= int(raw) <= 65535:
        raise ConfigurationError(f"{setting} must be a TCP port (0-65535), got {raw!r}")
    return int(raw)


def _listening(env: Mapping[str, str], handed: Mapping[str, socket.socket],
               console: bool) -> dict[str, socket.socket]:
    """One listening socket per served app: the one handed over by that name, else one bound
    on IIA_BIND and the app's port setting."""
    host = env.get("IIA_BIND", "127.0.0.1")
    defaults = {"mcp": 8000, "chat": 8001, "antenna": 8002, "console": 8003}
    return {name: handed[name] if name in handed
            else listening_socket(host, _port(env, name, defaults[name]))
            for name in _served(console)}


def antenna_management(env: Mapping[str, str]) -> OAuthManagement | None:
    """Outside receivers manage streams at Antenna with an access token of the IdP
    (`IIA_VERIFY_ISSUER`; its keys at `IIA_ANTENNA_MANAGEMENT_JWKS_URI`, by default the
    issuer's `/jwks`), audience = Antenna's issuer (`iia.antenna.management`)."""
    issuer = env.get("IIA_VERIFY_ISSUER")
    if not issuer:
        return None
    return OAuthManagement(issuer=issuer, audience=env["IIA_ANTENNA_URL"],
                           jwks_uri=env.get("IIA_ANTENNA_MANAGEMENT_JWKS_URI",
                                            issuer.rstrip("/") + "/jwks"))


async def run(env: Mapping[str, str], *, console: bool = False,
              sockets: Mapping[str, socket.socket] | None = None) -> None:
    """Serve the MCP server, the chat route, Antenna (and the console) until cancelled, on the
    handed-over `sockets` or on sockets bound from `env`."""
    handed = sockets or {}
    check_sockets(env, handed, console)  # configuration errors first, before anything starts
    receivers = ssf_receivers(env)
    audit = AuditSettings.from_env(env)
    events = EventBus()
    identity = WorkloadIdentity(IdentitySettings.from_env(env), events=events)
    mcp = McpServer(McpSettings.from_env(env), identity, events)
    agent = AgentSettings.from_env(env)
    chat = ChatApp(ChatSettings.from_env(env), agent, events, model=lambda: model_client(agent),
                   chain=mcp.chain, audit_dir=audit.directory)
    rules = Path(env["IIA_ANOMALY_RULES"]) if env.get("IIA_ANOMALY_RULES") else None
    antenna = Antenna(env["IIA_ANTENNA_URL"], env.get("IIA_ANTENNA_DB", "antenna.sqlite"),
                      events=events, rules=AnomalyRules.load(rules) if rules else None,
                      bounds=AntennaBounds.from_env(env),
                      management=antenna_management(env)).start()
    journal = audit.journal(EVENTS)
    if journal is not None:  # after Antenna: an event's SETs are committed before its record
        record_events(events, journal, antenna.sets_for, set_types=FOR_BUS_EVENT)
    for receiver in receivers:
        if receiver.name == "mcp":  # this very process: trust Antenna, demand the header
            mcp.ssf.subscribe(antenna.issuer, antenna.issuer + "/jwks",
                              receiver.authorization_header())
    subscribe_receivers(antenna, receivers)
    try:
        listening = _listening(env, handed, console)
        apps = [(mcp.app(), listening["mcp"], True), (chat.app(), listening["chat"], False),
                (antenna_app(antenna), listening["antenna"], False)]
        if console:
            apps.append((console_app(events, mcp.chain), listening["console"], False))
        servers = [uvicorn.Server(server_config(app, lifespan=lifespan, log_level="info",
                                                graceful_shutdown_s=3))
                   for app, _, lifespan in apps]
        await asyncio.gather(*(server.serve(sockets=[sock])
                               for server, (_, sock, _) in zip(servers, apps, strict=True)))
    finally:
        if journal is not None:
            journal.close()  # what is queued is written and fsynced
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
                             "IIA_CONSOLE_PORT or the handed-over socket `console` (loopback "
                             "only; default: off)")
    args = parser.parse_args(argv)
    try:
        env = load_env(args.env_file)
        handed = inherited_sockets()  # a process fact, not a setting: the real environment
        run_loop(run(env, console=args.console, sockets=handed))  # uvloop where installed
    except ConfigurationError as exc:
        sys.exit(f"iia.serve: {exc}")


if __name__ == "__main__":
    main()
