"""jsonschema for the tool arguments, imported without the format checkers `iia` never uses.

The chain validates a tool's arguments with `Draft202012Validator` and no `format_checker`
(docs/architecture.md §2, step 2): in JSON Schema 2020-12 `format` is an annotation unless a
checker is asked for, and the catalog's schemas constrain values by `pattern`, lengths and bounds
(`iia/catalog.py`). Importing jsonschema nevertheless fills its `FormatChecker` registry by
importing every optional format package that is installed, each under `suppress(ImportError)`
(`jsonschema/_format.py`). With `jsonschema[format-nongpl]`, which Jupyter asks for and so the
lab's environment has, that includes `rfc3987_syntax`, which builds a lark grammar at import
(1.5-2.2 s measured, most of `import iia.serve`), and `isoduration` (arrow and dateutil).

So jsonschema is imported here with those packages hidden for the duration of that one import
(an entry of None in `sys.modules` makes `import name` raise ImportError, as the import system
documents), and jsonschema leaves out the formats it cannot check. Afterwards each package
imports normally for anyone else. What remains, in a process where `iia` is the first to import
jsonschema, is that `jsonschema.FormatChecker()` does not know "iri", "duration" and the other
formats those packages check; a program that wants them imports jsonschema before `iia`. A
package already imported is left alone (jsonschema then uses it, at no further cost).

Validation is unchanged: the same validator class, the same `best_match`, the same messages.
`tests/test_fast_start.py` fails if a hidden package, or an SDK, is back on `import iia.serve`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["FORMAT_PACKAGES", "Draft202012Validator", "best_match"]

# jsonschema's optional format-checker packages (jsonschema/_format.py, jsonschema 4.x)
FORMAT_PACKAGES = ("fqdn", "idna", "isoduration", "jsonpointer", "rfc3339_validator",
                   "rfc3986_validator", "rfc3987", "rfc3987_syntax", "uri_template", "webcolors")


@contextmanager
def _hidden(names: tuple[str, ...]) -> Iterator[None]:
    """Make `import name` fail for each of `names` not yet imported, until the block ends."""
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # documented: import raises
    try:
        yield
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


with _hidden(() if "jsonschema" in sys.modules else FORMAT_PACKAGES):
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match
