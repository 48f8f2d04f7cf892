"""The scripted model: deterministic rules that turn a Messages API request into the next turn.

A script (`fixtures/scripts/claude.json`) is a list of scenarios. The user message that opened
the current turn picks the first scenario whose `when` regex matches (named groups become
`match.<name>`); the number of tool calls already made since that message picks the step. A step
either calls a tool (`tool`, `input`) or answers (`say`). Values may reference what happened:

    $match.email                       a named group of the `when` regex
    $results[0].users[?userName=x].id  a path into the JSON of this turn's first tool result
    {results[-1].totalResults}         the same inside `say` text; `{... | names}` lists names,
                                       `{... | count}` counts, `{error}` is the last error text

Steps may be conditional: `if_match` (a named group matched), `if_result_contains` (a tool
result of this turn contains a string; the model "obeys" it, which is how the prompt-injection
scenario behaves), `if_error` / `unless_error` (the last tool result was an error). A step
whose condition fails is skipped. When a tool result is an error and the step that made the call
does not say `continue_on_error`, the model reports the error (the scenario's `on_error` text).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ScriptedModel", "Turn"]


@dataclass(frozen=True)
class Turn:
    blocks: list[dict[str, Any]]
    stop_reason: str


@dataclass
class _State:
    match: dict[str, str]
    results: list[Any]  # parsed tool results of this turn (errors as {"error": text})
    errors: list[bool]
    last_text: str

    def context(self) -> dict[str, Any]:
        return {"match": self.match, "results": self.results}


_TOKEN = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(-?\d+)\]|\[\?([A-Za-z_]+)=([^\]]*)\]")


def resolve(path: str, context: Mapping[str, Any]) -> Any:
    """Evaluate `root.key[0][?field=value]...` against the context (None when it leads nowhere)."""
    head = re.match(r"[A-Za-z_]+", path)
    if head is None:
        return None
    value: Any = context.get(head.group(0))
    rest = path[head.end():]
    while rest:
        token = _TOKEN.match(rest)
        if token is None:
            return None
        key, index, field, expected = token.groups()
        if key is not None:
            value = value.get(key) if isinstance(value, Mapping) else None
        elif index is not None:
            i = int(index)
            value = value[i] if isinstance(value, Sequence) and -len(value) <= i < len(value) \
                else None
        else:
            value = next((item for item in value or [] if isinstance(item, Mapping)
                          and str(item.get(field)) == expected), None) \
                if isinstance(value, Sequence) else None
        rest = rest[token.end():]
    return value


def _render(template: str, state: _State) -> str:
    def replace(m: re.Match[str]) -> str:
        expr, _, fn = (part.strip() for part in m.group(1).partition("|"))
        if expr == "error":
            return state.last_text if state.errors and state.errors[-1] else ""
        value = resolve(expr, state.context())
        if fn == "count":
            return str(len(value) if isinstance(value, Sequence) else 0)
        if fn == "names":
            items = value if isinstance(value, Sequence) else []
            names = [str(i.get("displayName") or i.get("userName") or i.get("name") or i)
                     if isinstance(i, Mapping) else str(i) for i in items]
            return ", ".join(names) or "none"
        if isinstance(value, list | dict):
            return json.dumps(value)
        return "" if value is None else str(value)

    return re.sub(r"\{([^{}]+)\}", replace, template)


def _value(spec: Any, state: _State) -> Any:
    if isinstance(spec, str) and spec.startswith("$"):
        return resolve(spec[1:], state.context())
    if isinstance(spec, dict):
        return {k: _value(v, state) for k, v in spec.items()}
    if isinstance(spec, list):
        return [_value(v, state) for v in spec]
    if isinstance(spec, str):
        return _render(spec, state) if "{" in spec else spec
    return spec


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content if isinstance(b, dict))
    return ""


class ScriptedModel:
    def __init__(self, path: Path) -> None:
        doc = json.loads(path.read_text())
        self.scenarios: list[dict[str, Any]] = doc["scenarios"]
        self.fallback: str = doc["fallback"]
        self._compiled = [re.compile(s["when"]) for s in self.scenarios]

    def respond(self, messages: Sequence[Mapping[str, Any]]) -> Turn:
        opener, state = self._turn_state(messages)
        for scenario, pattern in zip(self.scenarios, self._compiled, strict=True):
            m = pattern.search(opener)
            if m:
                state.match = {k: v for k, v in m.groupdict().items() if v is not None}
                return self._step(scenario, state, calls_made=len(state.results))
        return Turn([{"type": "text", "text": self.fallback}], "end_turn")

    def _turn_state(self, messages: Sequence[Mapping[str, Any]]) -> tuple[str, _State]:
        """The user text that opened this turn, and the tool results that followed it."""
        opener = ""
        results: list[Any] = []
        errors: list[bool] = []
        last_text = ""
        for message in messages:
            content = message.get("content")
            blocks = content if isinstance(content, list) else []
            tool_results = [b for b in blocks if isinstance(b, dict)
                            and b.get("type") == "tool_result"]
            if message.get("role") == "user" and not tool_results:
                opener, results, errors = _text_of(content), [], []
                continue
            for block in tool_results:
                text = _text_of(block.get("content"))
                last_text = text
                is_error = bool(block.get("is_error"))
                errors.append(is_error)
                try:
                    results.append({"error": text} if is_error else json.loads(text))
                except json.JSONDecodeError:
                    results.append({"text": text})
        return opener, _State(match={}, results=results, errors=errors, last_text=last_text)

    def _step(self, scenario: Mapping[str, Any], state: _State, calls_made: int) -> Turn:
        done = 0
        for step in scenario["steps"]:
            if "tool" in step and not self._applies(step, state):
                continue
            if "tool" in step:
                if step.get("repeat") or done == calls_made:
                    block = {"type": "tool_use", "id": "toolu_" + uuid.uuid4().hex[:24],
                             "name": step["tool"], "input": _value(step.get("input", {}), state)}
                    blocks: list[dict[str, Any]] = []
                    if step.get("preamble"):
                        blocks.append({"type": "text", "text": _value(step["preamble"], state)})
                    return Turn([*blocks, block], "tool_use")
                done += 1
                if state.errors[done - 1] and not step.get("continue_on_error"):
                    return self._report_error(scenario, state)
                continue
            if self._applies(step, state):
                return Turn([{"type": "text", "text": _value(step["say"], state)}], "end_turn")
        return self._report_error(scenario, state)

    @staticmethod
    def _applies(step: Mapping[str, Any], state: _State) -> bool:
        last_error = bool(state.errors and state.errors[-1])
        if "if_match" in step and not state.match.get(step["if_match"]):
            return False
        if "if_result_contains" in step:
            needle = step["if_result_contains"]
            if not any(needle in json.dumps(r) for r in state.results):
                return False
        if step.get("if_error") and not last_error:
            return False
        return not (step.get("unless_error") and last_error)

    def _report_error(self, scenario: Mapping[str, Any], state: _State) -> Turn:
        handler = scenario.get("on_error", "I could not complete that: {error}")
        return Turn([{"type": "text", "text": _render(handler, state)}], "end_turn")
