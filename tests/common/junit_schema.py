#!/usr/bin/env python3
"""Check JUnit XML files against the rules of the JUnit schema CI reporters read.

  python3 tests/common/junit_schema.py FILE...     exit 1 with the first violation per file
  python3 tests/common/junit_schema.py --self-test  the checker against good and bad witnesses

The rules are those of Jenkins' xunit-plugin `junit-10.xsd` (the "JUnit schema" that
GitHub Actions reporters such as dorny/test-reporter and mikepenz/action-junit-report
accept), written out here because no PyPI or Debian package ships the XSD:

- the root is `testsuites` (or a lone `testsuite`); `testsuites` holds only `testsuite`s;
- `testsuite`: required `name`, `tests`, `failures`, `errors`; children in this order:
  `properties`?, `testcase`*, `system-out`?, `system-err`?;
- `testcase`: required `name`; children in this order: `skipped`?, `error`*, `failure`*,
  `system-out`*, `system-err`*;
- `failure`/`error`: attributes `message`, `type`, text only; `skipped`: `message`;
- `system-out`/`system-err`: text only (`xs:string`); `properties`: `property`* with
  required `name` and `value`;
- only declared attributes; counts are non-negative integers, `time` matches the schema's
  SUREFIRE_TIME pattern; no stray text between elements.
"""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET

SUREFIRE_TIME = re.compile(r"(([0-9]{0,3},)*[0-9]{3}|[0-9]{0,3})*(\.[0-9]{0,3})?")
COUNT = re.compile(r"[0-9]+")

ATTRS = {
    "testsuites": ({"name", "time", "tests", "failures", "disabled", "errors"}, set()),
    "testsuite": (
        {"name", "tests", "failures", "errors", "time", "disabled", "skipped", "timestamp",
         "hostname", "id", "package", "file", "log", "url", "version"},
        {"name", "tests", "failures", "errors"},
    ),
    "testcase": (
        {"name", "assertions", "time", "classname", "status", "class", "file", "line", "log",
         "group", "url"},
        {"name"},
    ),
    "failure": ({"message", "type"}, set()),
    "error": ({"message", "type"}, set()),
    "skipped": ({"message"}, set()),
    "system-out": (set(), set()),
    "system-err": (set(), set()),
    "properties": (set(), set()),
    "property": ({"name", "value"}, {"name", "value"}),
}

# Content models: ordered (child, min, max) particles; max None is unbounded.
MODELS: dict[str, list[tuple[str, int, int | None]]] = {
    "testsuites": [("testsuite", 0, None)],
    "testsuite": [("properties", 0, 1), ("testcase", 0, None), ("system-out", 0, 1),
                  ("system-err", 0, 1)],
    "testcase": [("skipped", 0, 1), ("error", 0, None), ("failure", 0, None),
                 ("system-out", 0, None), ("system-err", 0, None)],
    "properties": [("property", 0, None)],
    "property": [],
}
TEXT_ONLY = {"failure", "error", "skipped", "system-out", "system-err"}
COUNT_ATTRS = {"tests", "failures", "errors", "disabled", "skipped", "assertions"}


class Invalid(Exception):
    pass


def check_element(el: ET.Element, path: str) -> None:
    where = f"{path}/{el.tag}"
    if el.tag not in ATTRS:
        raise Invalid(f"{where}: element `{el.tag}` is not declared by the schema")
    allowed, required = ATTRS[el.tag]
    for name, value in el.attrib.items():
        if name not in allowed:
            raise Invalid(f"{where}: attribute `{name}` is undeclared")
        if name == "time" and not SUREFIRE_TIME.fullmatch(value):
            raise Invalid(f"{where}: time={value!r} does not match SUREFIRE_TIME")
        if name in COUNT_ATTRS and el.tag != "skipped" and not COUNT.fullmatch(value):
            raise Invalid(f"{where}: {name}={value!r} is not a count")
    for name in sorted(required - set(el.attrib)):
        raise Invalid(f"{where}: required attribute `{name}` is missing")
    if el.tag in TEXT_ONLY:
        if len(el):
            raise Invalid(f"{where}: text only (xs:string), but has element `{el[0].tag}`")
        return
    if (el.text or "").strip():
        raise Invalid(f"{where}: does not allow text")
    model = MODELS[el.tag]
    position = 0
    counts = [0] * len(model)
    for child in el:
        if (child.tail or "").strip():
            raise Invalid(f"{where}: does not allow text")
        while position < len(model) and model[position][0] != child.tag:
            position += 1
        if position == len(model):
            raise Invalid(f"{where}: `{child.tag}` is not allowed there (or out of order)")
        counts[position] += 1
        limit = model[position][2]
        if limit is not None and counts[position] > limit:
            raise Invalid(f"{where}: more than {limit} `{child.tag}`")
        check_element(child, where)
    for (name, least, _), n in zip(model, counts):
        if n < least:
            raise Invalid(f"{where}: needs at least {least} `{name}`")


def check_text(text: str) -> None:
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise Invalid(f"not well-formed XML: {e}") from None
    if root.tag not in ("testsuites", "testsuite"):
        raise Invalid(f"no global element `{root.tag}` (the root must be testsuites)")
    check_element(root, "")


GOOD = [
    '<testsuites><testsuite name="a" tests="1" failures="0" errors="0">'
    '<testcase name="t"/></testsuite></testsuites>',
    '<testsuites tests="2" failures="1" errors="0" time="1.250">'
    '<testsuite name="s" tests="2" failures="1" errors="0" skipped="0" time="1.250">'
    '<testcase name="a" time="0.500"/><testcase name="b" time="0.750">'
    '<failure message="test case failed">x</failure></testcase>'
    "<system-out>all\nlogs</system-out></testsuite></testsuites>",
]
BAD = [
    ('<testsuites><testsuite name="a" tests="1" failures="0"/></testsuites>',
     "required attribute `errors`"),
    ('<testsuites><testsuite name="a" tests="1" failures="0" errors="0" colour="red"/>'
     "</testsuites>", "`colour` is undeclared"),
    ('<testsuites><testcase name="t"/></testsuites>', "not allowed there"),
    ('<testsuites time="1.2.3"/>', "does not match SUREFIRE_TIME"),
    ("<testsuites>text</testsuites>", "does not allow text"),
    ('<testsuites><testsuite name="a" tests="1" failures="0" errors="0"><testcase name="t">'
     "<system-out><b/></system-out></testcase></testsuite></testsuites>", "xs:string"),
    ('<testsuites><testsuite name="a" tests="1" failures="0" errors="0"><system-out/>'
     '<testcase name="t"/></testsuite></testsuites>', "not allowed there"),
    ('<testsuites><testsuite name="a" tests="1" failures="0" errors="0"><system-out/>'
     "<system-out/></testsuite></testsuites>", "more than 1"),
    ('<testsuites><testsuite name="a" tests="x" failures="0" errors="0"/></testsuites>',
     "not a count"),
    ('<testsuites><testsuite name="a" tests="1" failures="0" errors="0"><properties>'
     '<property name="x"/></properties></testsuite></testsuites>', "required attribute `value`"),
    ("<testcases/>", "no global element"),
    ("<testsuites>", "not well-formed"),
]


def self_test() -> None:
    for text in GOOD:
        check_text(text)
    for text, expected in BAD:
        try:
            check_text(text)
        except Invalid as e:
            if expected not in str(e):
                raise SystemExit(f"{text}: wrong reason: {e} (expected {expected!r})")
        else:
            raise SystemExit(f"{text}: accepted, expected {expected!r}")
    print(f"junit_schema: {len(GOOD)} good and {len(BAD)} bad witnesses judged right")


def main(argv: list[str]) -> int:
    if argv == ["--self-test"]:
        self_test()
        return 0
    status = 0
    for path in argv:
        try:
            with open(path, encoding="utf-8") as f:
                check_text(f.read())
            print(f"{path}: valid")
        except (Invalid, OSError) as e:
            print(f"{path}: INVALID: {e}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
