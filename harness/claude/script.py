"""The scripted model: a Messages API request (the whole conversation) in, the next turn out.

The script, `fixtures/scripts/claude.json`, holds the words: the phrase table a request is
read with (`harness.claude.grammar`), the politeness that is ignored and the help sentence.
What each intent does is `harness.claude.planner`. The turn is a function of the messages
alone: the same conversation always gives the same blocks, tool_use ids included.

    messages -> the user text that opened this turn -> clauses (grammar)
             -> the tool results before it (what the model knows) and since it (replay)
             -> the next tool_use, or the answer
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.claude.grammar import Clause, Grammar
from harness.claude.planner import HANDLERS, Memory, Outcome, Step, outcome_data, plan

__all__ = ["ScriptedModel", "Turn"]

READS = frozenset({"list_users", "get_user", "list_groups", "list_applications",
                   "get_application", "list_access_policies", "get_access_policy"})
# The questions after which the next message is read as the rest of the request before it.
CLARIFICATIONS = ("What e-mail address should ", "What are the first and last names of ")


@dataclass(frozen=True)
class Turn:
    blocks: list[dict[str, Any]]
    stop_reason: str


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content
                       if isinstance(b, dict) and b.get("type", "text") == "text")
    return ""


@dataclass
class _Conversation:
    """A Messages API conversation as the model reads it."""

    opener: str = ""  # the user's words that opened this turn
    before: list[Outcome] = field(default_factory=list)  # tool results of earlier turns
    now: list[Outcome] = field(default_factory=list)  # tool results since the opener
    previous_opener: str = ""
    previous_reads_only: bool = True  # the turn before made no change
    previous_answer: str = ""

    @classmethod
    def read(cls, messages: Sequence[Mapping[str, Any]]) -> _Conversation:
        conversation = cls()
        uses: dict[str, tuple[str, Mapping[str, Any]]] = {}
        answer = ""
        for message in messages:
            content = message.get("content")
            blocks = [b for b in content if isinstance(b, dict)] if isinstance(content,
                                                                                list) else []
            if message.get("role") == "assistant":
                for block in blocks:
                    if block.get("type") == "tool_use":
                        uses[str(block.get("id"))] = (str(block.get("name")),
                                                      block.get("input") or {})
                answer = _text_of(content)
                continue
            results = [b for b in blocks if b.get("type") == "tool_result"]
            if not results:  # the user's words: a new turn
                conversation.previous_opener = conversation.opener
                conversation.previous_reads_only = all(o.name in READS
                                                       for o in conversation.now)
                conversation.previous_answer = answer
                conversation.before += conversation.now
                conversation.opener, conversation.now, answer = _text_of(content), [], ""
                continue
            for block in results:
                name, arguments = uses.get(str(block.get("tool_use_id")), ("", {}))
                text = _text_of(block.get("content"))
                ok = not block.get("is_error")
                conversation.now.append(Outcome(name, arguments, ok, text,
                                                outcome_data(text) if ok else None))
        return conversation


class ScriptedModel:
    def __init__(self, path: Path) -> None:
        doc = json.loads(path.read_text())
        self.name: str = doc.get("model", "claude-lab-scripted")
        self.help: str = doc["help"]
        self.grammar = Grammar.from_script(doc)
        unknown = sorted({p.intent for p in self.grammar.phrases} - set(HANDLERS))
        if unknown:
            raise ValueError(f"{path}: no behaviour for the intents {', '.join(unknown)}")

    def understand(self, text: str) -> list[Clause] | None:
        """The clauses of a request (None when part of it maps to nothing here)."""
        return self.grammar.parse(text)

    def respond(self, messages: Sequence[Mapping[str, Any]]) -> Turn:
        conversation = _Conversation.read(messages)
        clauses = self.understand(conversation.opener)
        if (not clauses or clauses[0].intent == "help") and conversation.previous_reads_only \
                and conversation.previous_answer.startswith(CLARIFICATIONS):
            clauses = self.understand(conversation.previous_opener + ", "
                                      + conversation.opener) or clauses
        memory = Memory()
        for outcome in conversation.before:
            memory.learn(outcome)
        step = plan(clauses or [], memory, conversation.now, self.help)
        return self._turn(step, messages)

    @staticmethod
    def _turn(step: Step, messages: Sequence[Mapping[str, Any]]) -> Turn:
        if not step.tool:
            return Turn([{"type": "text", "text": step.text}], "end_turn")
        seed = json.dumps([messages, step.tool, step.input], sort_keys=True, default=str)
        use = {"type": "tool_use", "id": "toolu_" + hashlib.sha256(seed.encode()).hexdigest()[:24],
               "name": step.tool, "input": dict(step.input)}
        preamble = [{"type": "text", "text": step.text}] if step.text else []
        return Turn([*preamble, use], "tool_use")
