"""The scripted model's grammar: what a person in a room types, turned into clauses.

A request is split into sentences and at `and` / `then` / commas; politeness ("could you
please", "I'd like you to", "kindly", "thanks") is dropped from each piece; each piece is matched
against the phrase table of `fixtures/scripts/claude.json`, tried in order. A phrase is words
with a tiny notation:

    (disable|lock out)   one of these            [the|a]    optional, one of these
    {user}               a person: an e-mail, an id, a name ("Ivan", "ivan ivanov") or a pronoun
    {new}                a new person: e-mail, name and an optional title, in any order
    {group}              a group name ("Sales", "the sales team")
    ...                  any words (only where the wording does not matter)

A slot matches only if its words parse as what it names, so "create user zoe@example.com Zoe
Zimmer and add her to Engineering" is two clauses and "deactivate ivan and mike" one clause
with two people. A piece that matches nothing is joined to its neighbour ("create a new user
called Yara Young, yara@example.com"). Matching ignores case; slots keep what was typed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Clause", "Grammar", "GroupRef", "NewPerson", "PersonRef", "Target"]

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
USER_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
WORD = re.compile(r"^[A-Za-z][A-Za-z'-]*$")

PRONOUNS = frozenset({"him", "her", "them", "he", "she", "they", "his", "hers", "their",
                      "this user", "that user", "the same user", "the new user", "this person",
                      "that person", "the same person", "the new person", "that one",
                      "this one", "the new hire", "this account", "that account"})
# Words that never are a person's or a group's name (besides every word of the phrase table).
FUNCTION_WORDS = frozenset({
    "a", "an", "the", "and", "or", "but", "to", "from", "of", "in", "into", "on", "onto", "for",
    "with", "by", "at", "as", "is", "are", "be", "was", "were", "then", "also", "too", "all",
    "every", "everyone", "everybody", "anyone", "somebody", "someone", "nobody", "user", "users",
    "people", "person", "account", "accounts", "group", "groups", "team", "me", "my", "i", "you",
    "your", "we", "our", "us", "it", "its", "this", "that", "these", "those", "please", "now",
    "here", "there", "what", "who", "which", "how", "why", "not", "no", "yes"})
# Said around a person reference without naming anyone: "the user ivan", "laura's account".
PERSON_FILLER_HEAD = ("the user", "user", "the account of", "account of", "the account for",
                      "the person", "the employee", "employee", "colleague", "our")
PERSON_FILLER_TAIL = ("'s account", "'s user", "'s profile", "'s record", "account", "user")
GROUP_FILLER_TAIL = ("group", "groups", "team", "department", "dept")
# "admins" and its synonyms, read as the tenant's administrators group (reads only)
ADMIN_GROUP = "Tenant Administrators"
ADMIN_GROUP_WORDS = frozenset({"admins", "administrators", "admin", "tenant admins",
                               "tenant administrators"})
READ_GROUP_INTENTS = frozenset({"group_info", "group_members"})
NOT_GROUPS = frozenset({"tenant", "directory", "system", "verify", "company", "organisation",
                        "organization", "admins", "administrators", "admin"})
# Words a new person's description may carry besides their name and e-mail.
NEW_FILLER = frozenset({
    "called", "named", "with", "whose", "e-mail", "email", "mail", "address", "is", "at",
    "username", "login", "for", "the", "a", "an", "new", "user", "account", "person", "employee",
    "hire", "starter", "colleague"})
TITLE_MARK = re.compile(r"\b(?:as an?|as|with the title|with title|title|who is an?|"
                        r"working as an?|job title)\s+", re.I)
SEPARATOR = re.compile(r"(\s*[.?!;]+(?:\s+|$)|\s*,\s*|\s+(?:and then|and also|and|then|"
                       r"also|after that|plus)\s+)", re.I)


def normalize(text: str) -> str:
    """Words separated by single spaces: no commas, brackets or quotes, no final full stop,
    typographic apostrophes made plain. E-mail addresses keep their dots."""
    text = text.replace("\u2019", "'").replace("\u2018", "'")
    text = re.sub(r"[,;:!?()\"\u201c\u201d\u2014<>]", " ", text)
    words = [w.rstrip(".") for w in text.split()]
    return " ".join(w for w in words if w)


@dataclass(frozen=True)
class PersonRef:
    """Someone the request names: exactly one field is set."""

    email: str = ""
    user_id: str = ""
    name: str = ""
    pronoun: str = ""

    def shown(self) -> str:
        return self.email or self.name or self.pronoun or self.user_id


@dataclass(frozen=True)
class NewPerson:
    email: str = ""
    given: str = ""
    family: str = ""
    title: str = ""

    def shown(self) -> str:
        name = f"{self.given} {self.family}".strip()
        return f"{name} ({self.email})" if name and self.email else name or self.email


@dataclass(frozen=True)
class GroupRef:
    name: str


Target = PersonRef | NewPerson


@dataclass(frozen=True)
class Clause:
    intent: str
    targets: tuple[Target, ...] = ()
    group: GroupRef | None = None


@dataclass(frozen=True)
class _Phrase:
    intent: str
    text: str
    pattern: re.Pattern[str]


def _alternatives(token: str) -> list[str]:
    return [alt.strip() for alt in token[1:-1].split("|")]


def _words(alt: str) -> str:
    return "".join(re.escape(word) + " " for word in alt.split())


def _compile(phrase: str) -> re.Pattern[str]:
    """The phrase notation as an anchored regex over normalized text plus a final space."""
    parts: list[str] = []
    for token in re.findall(r"\[[^\]]*\]|\([^)]*\)|\S+", phrase):
        if token == "...":  # noqa: S105 - the notation's "any words", not a secret
            parts.append(r"(?:\S+ )*?")
        elif token.startswith("["):
            parts.append("(?:" + "|".join(_words(a) for a in _alternatives(token)) + ")?")
        elif token.startswith("("):
            parts.append("(?:" + "|".join(_words(a) for a in _alternatives(token)) + ")")
        elif token.startswith("{"):
            slot, _, suffix = token[1:].partition("}")
            parts.append(f"(?P<{slot}>.+?)" + (re.escape(suffix) if suffix else "") + " ")
        else:
            parts.append(_words(token))
    return re.compile("^" + "".join(parts) + "$", re.IGNORECASE)


def _strip_words(text: str, heads: Sequence[str], tails: Sequence[str]) -> str:
    changed = True
    while changed:
        changed = False
        for head in heads:
            if text.lower().startswith(head + " "):
                text, changed = text[len(head) + 1:], True
        for tail in tails:
            if text.lower().endswith((" " + tail) if tail[0] != "'" else tail):
                text, changed = text[:-len(tail)].rstrip(), True
    return text.strip()


def _titled(words: Sequence[str]) -> list[str]:
    """Names as people write them: 'yara young' -> 'Yara Young'; 'McKay' stays."""
    return [w if any(c.isupper() for c in w) else w[:1].upper() + w[1:] for w in words]


@dataclass
class Grammar:
    """The phrase table and politeness lists of the script, compiled."""

    phrases: list[_Phrase]
    prefixes: list[str]
    suffixes: list[str]
    stop: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_script(cls, doc: Mapping[str, Any]) -> Grammar:
        phrases = [_Phrase(entry["intent"], text, _compile(text))
                   for entry in doc["intents"] for text in entry["phrases"]]
        literal = {word.lower() for p in phrases
                   for word in re.findall(r"[A-Za-z][A-Za-z'-]*", re.sub(r"\{\w+\}", " ", p.text))}
        politeness = doc["politeness"]
        prefixes = sorted((normalize(p).lower() for p in politeness["prefixes"]), key=len,
                          reverse=True)
        suffixes = sorted((normalize(s).lower() for s in politeness["suffixes"]), key=len,
                          reverse=True)
        return cls(phrases, prefixes, suffixes, frozenset(literal | FUNCTION_WORDS))

    # -- slots -----------------------------------------------------------------------------

    def person(self, text: str) -> PersonRef | None:
        text = _strip_words(text.strip(), PERSON_FILLER_HEAD, PERSON_FILLER_TAIL)
        if text.endswith("'s"):
            text = text[:-2]
        emails = EMAIL.findall(text)
        if len(emails) == 1:  # "Ivan Ivanov ivan@example.com": the address says who
            rest = [w for w in EMAIL.sub(" ", text).split() if w.lower() not in NEW_FILLER]
            return PersonRef(email=emails[0].lower()) if self._names(rest) is not None else None
        if emails:
            return None
        if USER_ID.match(text):
            return PersonRef(user_id=text.lower())
        if text.lower() in PRONOUNS:
            return PersonRef(pronoun=text.lower())
        names = self._names(text.split())
        return PersonRef(name=" ".join(_titled(names))) if names else None

    def _names(self, words: Sequence[str]) -> list[str] | None:
        """Up to three name words, none of them a word of the grammar; None if not a name."""
        if len(words) > 3 or any(not WORD.match(w) or w.lower() in self.stop for w in words):
            return None
        return list(words)

    def new_person(self, text: str) -> NewPerson | None:
        emails = EMAIL.findall(text)
        if len(emails) > 1:
            return None
        title = ""
        mark = TITLE_MARK.search(EMAIL.sub(" ", text))
        rest = EMAIL.sub(" ", text)
        if mark:
            rest, title = rest[:mark.start()], rest[mark.end():]
            title_words = [w for w in title.split() if w.lower() not in ("a", "an", "the")]
            if not title_words or len(title_words) > 6 or any(
                    w.lower() in ("and", "then") for w in title_words):
                return None
            title = " ".join(_titled(title_words))
        names = self._names([w for w in rest.split() if w.lower() not in NEW_FILLER])
        if names is None or not (names or emails):
            return None
        email = emails[0].lower() if emails else ""
        if not names and email:  # yara.young@example.com -> Yara Young
            local = re.split(r"[._-]", email.split("@")[0])
            names = local if len(local) == 2 and all(p.isalpha() for p in local) else []
        names = _titled(names)
        given, family = (names[0], " ".join(names[1:])) if names else ("", "")
        return NewPerson(email=email, given=given, family=family, title=title)

    def group(self, text: str, *, reading: bool = False) -> GroupRef | None:
        """The group a phrase names. "The admins" names Tenant Administrators only to read
        it ("who is in the admins group"): to join it is to be made an administrator, which
        is the grant_admin intent, never a membership change."""
        text = _strip_words(text.strip(), ("the",), GROUP_FILLER_TAIL)
        if reading and text.lower() in ADMIN_GROUP_WORDS:
            return GroupRef(ADMIN_GROUP)
        words = text.split()
        if not words or len(words) > 4 or text.lower() in NOT_GROUPS or any(
                not WORD.match(w) and w != "&" for w in words) or \
                any(w.lower() in PRONOUNS or w.lower() in FUNCTION_WORDS for w in words):
            return None
        return GroupRef(" ".join(_titled(words)))

    # -- clauses ---------------------------------------------------------------------------

    def polite(self, text: str) -> str:
        """The request without its politeness and connectives, normalized."""
        text = normalize(text)
        changed = True
        while changed and text:
            changed = False
            low = text.lower()
            for prefix in self.prefixes:
                if low.startswith(prefix + " "):
                    text, changed = text[len(prefix):].lstrip(), True
                    break
            low = text.lower()
            for suffix in self.suffixes:
                if low.endswith(" " + suffix):
                    text, changed = text[:len(text) - len(suffix)].rstrip(), True
                    break
        return text

    def clause(self, text: str) -> Clause | None:
        """The first phrase whose slots all parse, as a clause (None when none does)."""
        text = self.polite(text)
        if not text:
            return Clause("empty")
        for phrase in self.phrases:
            m = phrase.pattern.match(text + " ")
            if m is None:
                continue
            slots = m.groupdict()
            targets: list[Target] = []
            group: GroupRef | None = None
            if "user" in slots:
                person = self.person(slots["user"])
                if person is None:
                    continue
                targets.append(person)
            if "new" in slots:
                new = self.new_person(slots["new"])
                if new is None:
                    continue
                targets.append(new)
            if "group" in slots:
                group = self.group(slots["group"], reading=phrase.intent in READ_GROUP_INTENTS)
                if group is None:
                    continue
            return Clause(phrase.intent, tuple(targets), group)
        return None

    def parse(self, text: str) -> list[Clause] | None:
        """Every clause of a request, in order; None when a piece of it means nothing here."""
        pieces = SEPARATOR.split(text.strip())
        segments = [(pieces[i - 1] if i else "", pieces[i]) for i in range(0, len(pieces), 2)]
        clauses: list[Clause] = []
        last = ""  # the text the last clause was read from
        pending = ""  # text that means nothing yet, waiting for the next piece
        for separator, segment in segments:
            if not self.polite(segment):
                pending = pending + separator if pending else pending
                continue
            if pending:
                joined = pending + separator + segment
                parsed = self.clause(joined)
                if parsed is not None:
                    clauses.append(parsed)
                    last, pending = joined, ""
                else:
                    pending = joined
                continue
            alone = self.clause(segment)
            if alone is not None and alone.intent != "empty":
                clauses.append(alone)
                last = segment
                continue
            if clauses:
                joined = last + separator + segment
                parsed = self.clause(joined)
                if parsed is not None:
                    clauses[-1], last = parsed, joined
                    continue
                previous = clauses[-1]
                extra = self.person(self.polite(segment))
                if extra is not None and previous.targets and isinstance(
                        previous.targets[0], PersonRef):
                    clauses[-1] = Clause(previous.intent, (*previous.targets, extra),
                                         previous.group)
                    continue
            pending = segment
        if pending:
            return None
        return [c for c in clauses if c.intent != "empty"]
