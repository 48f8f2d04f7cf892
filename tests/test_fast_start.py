"""Fast start (issue #14 item 4): no heavy import on a start path or on the first tool call.

Module sets, never durations: each check runs a fresh interpreter and asserts which modules it
loaded. The heavy ones measured: `rfc3987_syntax` (a lark grammar built at import, 1.5-2.2 s,
pulled in by jsonschema's format checkers, installed because Jupyter asks for
`jsonschema[format-nongpl]`), `isoduration` (arrow, dateutil) the same way, and the anthropic
SDK (1-2.5 s), which the agent loop loads on its first turn (`iia.agent.ModelClient`).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from iia.catalog import CATALOG

ROOT = Path(__file__).resolve().parent.parent

# never on a start path: jsonschema's costly format-checker packages, and the model SDK
HEAVY = ("rfc3987_syntax", "lark", "isoduration", "arrow", "anthropic")


def _run(script: str) -> dict[str, object]:
    """Run `script` in a fresh interpreter (the repository first on the path); it prints one
    JSON value as its last line."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


def _loaded_after(module: str) -> list[str]:
    out = _run(f"""
        import json, sys
        import {module}
        print(json.dumps({{"loaded": sorted(m for m in {HEAVY!r} if m in sys.modules)}}))
        """)
    return list(out["loaded"])  # type: ignore[call-overload]


@pytest.mark.parametrize("module", ["iia.serve", "harness.serve", "harness.notebook"])
def test_no_heavy_module_on_a_start_path(module: str) -> None:
    assert _loaded_after(module) == [], f"import {module} loads a heavy module again"


@pytest.mark.skipif(importlib.util.find_spec("rfc3987_syntax") is None,
                    reason="rfc3987_syntax is not installed: jsonschema cannot load it anyway")
def test_a_plain_jsonschema_import_would_load_the_grammar() -> None:
    """The check above can fail: here, jsonschema imported as anyone would, it does."""
    assert "rfc3987_syntax" in _loaded_after("jsonschema")


def test_attaching_a_notebook_does_not_load_the_in_process_lab() -> None:
    out = _run("""
        import json, sys
        import harness.notebook, harness.widgets
        print(json.dumps({"loaded": sorted(m for m in ("harness.lab", "scim2_server", "cedarpy")
                                           if m in sys.modules)}))
        """)
    assert out["loaded"] == []


def test_the_hidden_packages_import_normally_afterwards() -> None:
    """The format packages are hidden from jsonschema's import only: nothing is left in
    sys.modules that would make a later `import` of one of them fail."""
    out = _run("""
        import importlib, importlib.util, json, sys
        import iia.enforcement
        from iia.tool_schema import FORMAT_PACKAGES
        stale = [n for n in FORMAT_PACKAGES if n in sys.modules and sys.modules[n] is None]
        installed = [n for n in FORMAT_PACKAGES if importlib.util.find_spec(n) is not None]
        for name in installed:
            importlib.import_module(name)
        print(json.dumps({"stale": stale, "imported": installed}))
        """)
    assert out["stale"] == []
    assert "rfc3987_syntax" in out["imported"] or importlib.util.find_spec("rfc3987_syntax") is None


# bad arguments for the catalog's schemas: every keyword they use, and more than one error at once
BAD: list[tuple[str, object]] = [
    ("list_users", {"count": 1000}), ("list_users", {"count": 0}), ("list_users", {"count": "5"}),
    ("list_users", {"count": True}), ("list_users", {"count": 2.5}), ("list_users", {"bogus": 1}),
    ("list_users", {"filter": "x" * 300}), ("list_users", {"start_index": 0}),
    ("list_users", []), ("list_users", {"count": 1000, "bogus": 1}),
    ("get_user", {}), ("get_user", {"user_id": ""}), ("get_user", {"user_id": "../../Groups"}),
    ("get_user", {"user_id": "a" * 129}), ("get_user", {"user_id": None}),
    ("create_user", {"user_name": "not-an-email", "given_name": "A", "family_name": "B"}),
    ("create_user", {"given_name": "A"}),
    ("create_user", {"user_name": "a@b.c", "given_name": "", "family_name": "B"}),
    ("create_user", {"user_name": "a@b.c", "given_name": "A", "family_name": "B", "title": 7}),
    ("create_user", {"user_name": "é@ü.example", "given_name": "A", "family_name": "B",
                     "x": 1}),
    ("list_applications", {"anything": 1}),
]

_MESSAGES = """
    import json, sys
    {prelude}
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match
    schemas, cases = json.loads(sys.argv[1])
    out = []
    for name, args in cases:
        error = best_match(Draft202012Validator(schemas[name]).iter_errors(args))
        out.append(None if error is None else
                   ["/".join(str(p) for p in error.absolute_path), error.message])
    print(json.dumps({{"messages": out}}))
    """


def _messages(prelude: str) -> list[object]:
    schemas = {t.name: dict(t.input_schema) for t in CATALOG}
    script = textwrap.dedent(_MESSAGES.format(prelude=prelude))
    done = subprocess.run([sys.executable, "-c", script, json.dumps([schemas, BAD])], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return list(json.loads(done.stdout.splitlines()[-1])["messages"])


def test_arguments_are_refused_exactly_as_with_a_plain_jsonschema() -> None:
    """The chain's validator (jsonschema imported by iia.tool_schema, format packages hidden)
    refuses every bad argument with the same path and sentence as jsonschema imported as
    anyone would, with every format checker it can load."""
    plain = _messages("")
    ours = _messages("import iia.tool_schema")
    assert len(plain) == len(BAD) and all(m is not None for m in plain), plain
    assert ours == plain


def test_the_chains_first_call_imports_nothing() -> None:
    """The enforcement hot path pays no import on its first call: arguments refused, then a
    call that reaches step 3 (a workload identity whose Workload API is down), in a fresh
    `iia.serve` interpreter; the modules loaded before and after are the same. (The identity
    clients' own first-call imports are measured, not asserted: a few ms of grpc and
    cryptography internals.)"""
    out = _run("""
        import json, sys
        from contextlib import contextmanager
        import iia.serve
        from iia.enforcement import EnforcementChain
        from iia.events import EventBus
        from iia.hitl import ConsentCache
        from iia.identity.errors import WorkloadApiUnavailableError
        from iia.resource_server import Caller
        from iia.sessions import SessionRevocations

        class Down:
            @contextmanager
            def established(self, audience):
                raise WorkloadApiUnavailableError("the Workload API is down (test)")
                yield

        class Server:
            issuer = "https://idp.invalid"

        events = EventBus()
        chain = EnforcementChain(identity=Down(), server=Server(), admin=None, approvals=None,
                                 consents=ConsentCache(), events=events,
                                 revocations=SessionRevocations(),
                                 admin_api_url="https://idp.invalid/v2.0")
        caller = Caller(token="t", sub="u1", email="alice@example.com", sid="s1", claims={})
        before = set(sys.modules)
        refused = chain.call("list_users", {"count": 1000}, caller)
        stopped = chain.call("create_user", {"user_name": "a@b.example", "given_name": "A",
                                             "family_name": "B"}, caller)
        print(json.dumps({"new": sorted(set(sys.modules) - before),
                          "codes": [refused.code, stopped.code]}))
        """)
    assert out["codes"] == ["invalid_arguments", "workload_api_unavailable"]
    assert out["new"] == [], f"the first tool call imported {out['new']}"


def test_the_model_sdk_loads_on_the_first_turn_off_the_event_loop() -> None:
    """`model_client` (what the chat route calls for its first chat) loads no SDK; the first
    turn's `ModelClient.client()` imports it in a worker thread, so the event loop the chat
    route shares with the MCP server and Antenna never blocks on the import."""
    out = _run("""
        import asyncio, json, sys, threading
        import iia.serve
        from iia.agent import model_client
        from iia.settings import AgentSettings

        where = []

        class Watch:  # notes the thread that imports the SDK, then lets the import go on
            def find_spec(self, name, path=None, target=None):
                if name == "anthropic":
                    where.append(threading.current_thread() is threading.main_thread())
                return None

        sys.meta_path.insert(0, Watch())
        env = {"IIA_ANTHROPIC_BASE_URL": "http://127.0.0.1:9", "IIA_MODEL": "scripted",
               "IIA_MCP_RESOURCE": "http://127.0.0.1:9/mcp"}
        model = model_client(AgentSettings.from_env(env))
        after_factory = "anthropic" in sys.modules

        async def first_turn():
            async with model:
                first, again = await model.client(), await model.client()
                return type(first).__name__, first is again

        name, same = asyncio.run(first_turn())
        print(json.dumps({"after_factory": after_factory, "on_loop_thread": where,
                          "client": name, "one_client": same}))
        """)
    assert out["after_factory"] is False
    assert out["on_loop_thread"] == [False]
    assert out["client"] == "AsyncAnthropic" and out["one_client"] is True
