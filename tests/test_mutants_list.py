"""The mutation list of `make mutants` (mutants/rules.toml) is well-formed and applies to this
tree: every `find` occurs exactly once in its file and the mutated file still parses. A refactor
that makes a mutation stale fails here, in `make test`, not only in the slow mutation run (which
does not run in CI). No mutation is run."""

from __future__ import annotations

from pathlib import Path

import pytest

from mutants.run import ROOT, Mutant, RulesError, load_rules, stale_reason

MUTANTS = load_rules()
# written alongside the mutation list (issue #11); they name tests that may not exist yet
PENDING_TEST_FILES = {"tests/test_rules_receivers.py", "tests/test_rules_exchange.py"}


def test_the_list_is_well_formed() -> None:
    assert len(MUTANTS) >= 50
    assert len({m.id for m in MUTANTS}) == len(MUTANTS)
    for m in MUTANTS:
        assert (ROOT / m.file).is_file(), m.id
        assert len(m.rule.split()) >= 5 and not m.rule.endswith("."), m.id  # a sentence
        for test in m.tests:
            path = test.split("::", 1)[0]
            assert path.startswith("tests/test_") and path.endswith(".py"), (m.id, test)
            assert (ROOT / path).is_file() or path in PENDING_TEST_FILES, (m.id, test)


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.id for m in MUTANTS])
def test_every_named_test_function_exists(mutant: Mutant) -> None:
    """A renamed test would make the entry BROKEN (nothing collected) at the next run."""
    for test in mutant.tests:
        path, _, node = test.partition("::")
        if not node or not (ROOT / path).is_file():
            continue
        function = node.split("::")[-1].split("[", 1)[0]
        assert f"def {function}(" in (ROOT / path).read_text(encoding="utf-8"), test


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.id for m in MUTANTS])
def test_every_mutation_applies_to_this_tree(mutant: Mutant) -> None:
    assert stale_reason(mutant) is None


def test_a_stale_or_unparsable_mutation_is_reported(tmp_path: Path) -> None:
    (tmp_path / "rule.py").write_text("if x != y:\n    raise E\nif x != y:\n    raise E\n")

    def entry(find: str, replace: str = "if False:") -> Mutant:
        return Mutant(id="m", rule="a rule", file="rule.py", find=find, replace=replace,
                      tests=("tests/test_x.py",))

    assert "occurs 2 times" in (stale_reason(entry("if x != y:"), tmp_path) or "")
    assert "occurs 0 times" in (stale_reason(entry("if x == y:"), tmp_path) or "")
    assert "does not parse" in (stale_reason(entry("if x != y:\n    raise E\nif", "if ("),
                                             tmp_path) or "")
    assert "cannot read" in (stale_reason(Mutant(
        id="m", rule="r", file="gone.py", find="x", replace="y", tests=("tests/t.py",)),
        tmp_path) or "")
    assert stale_reason(entry("raise E\nif x != y:", "raise E\nif False:"), tmp_path) is None


def test_a_malformed_list_is_refused_with_every_problem(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text("""
version = 1
[[mutant]]
id = "a"
rule = "r"
file = "f.py"
find = "x"
replace = "y"
tests = ["tests/test_a.py"]
[[mutant]]
id = "a"
rule = "r"
file = "f.py"
find = "x"
replace = "x"
tests = ["elsewhere/test_a.py"]
[[mutant]]
id = "b"
rule = "r"
file = "f.py"
find = "x"
""")
    with pytest.raises(RulesError) as err:
        load_rules(rules)
    problems = str(err.value)
    assert "duplicate id" in problems and "same as find" in problems
    assert "paths under tests/" in problems and "missing ['replace', 'tests']" in problems
