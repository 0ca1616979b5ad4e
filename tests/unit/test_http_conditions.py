"""Entity tags and conditional headers as RFC 9110 section 13 reads them, and the RFC 9457
problem document every error becomes."""

from __future__ import annotations

import pytest
from werkzeug.datastructures import MultiDict

from shared_lib.domain.versions import tag_of
from shared_lib.http.conditions import check_query, etag, expected_versions, not_modified
from shared_lib.http.errors import PROBLEM_TYPES, TITLES, HttpError, problem

VIEW = {"sku": "A", "name": "Apple"}


def test_a_tag_follows_what_the_record_shows_not_how_it_was_built() -> None:
    assert tag_of(VIEW) == tag_of({"name": "Apple", "sku": "A"})
    assert tag_of(VIEW) != tag_of({**VIEW, "name": "Pear"})
    assert etag(VIEW) == f'"{tag_of(VIEW)}"'


def test_if_match_compares_strongly_and_star_means_any_existing_version() -> None:
    strong = expected_versions(f'"x", {etag(VIEW)}')
    assert strong is not None and strong.allows(VIEW)
    assert not strong.allows({**VIEW, "name": "Pear"}) and not strong.allows(None)
    weak = expected_versions(f"W/{etag(VIEW)}")
    assert weak is not None and not weak.allows(VIEW)
    anything = expected_versions("*")
    assert anything is not None and anything.allows(VIEW) and not anything.allows(None)
    assert expected_versions(None) is None


def test_if_none_match_compares_weakly() -> None:
    tag = etag(VIEW)
    assert not_modified(f"W/{tag}", tag) and not_modified(f'"a" ,{tag}', tag)
    assert not_modified("*", tag)
    assert not not_modified('"a"', tag) and not not_modified(None, tag)


@pytest.mark.parametrize("header", ["abc", '"a" "b"', '"a", b', 'W/ "a"', '"a"x'])
def test_a_malformed_tag_list_is_refused_naming_the_header(header: str) -> None:
    with pytest.raises(HttpError) as refused:
        expected_versions(header)
    assert refused.value.reply.status == 400
    assert refused.value.reply.body["field"] == "If-Match"


def test_query_parameters_must_be_known_and_sent_once() -> None:
    check_query("GET", "/products", ("limit", "cursor"), MultiDict([("limit", "5")]))
    with pytest.raises(HttpError) as unknown:
        check_query("GET", "/products", ("limit",), MultiDict([("limt", "5")]))
    assert unknown.value.reply.body["field"] == "limt"
    assert unknown.value.reply.body["error"] == "unknown_parameter"
    with pytest.raises(HttpError) as repeated:
        check_query("GET", "/products", ("limit",), MultiDict([("limit", "1"), ("limit", "2")]))
    assert repeated.value.reply.body["field"] == "limit"


def test_a_problem_keeps_our_members_and_adds_the_standard_ones() -> None:
    body = problem(
        409, {"error": "insufficient_stock", "message": "short", "warehouse": "W"}, "r/1"
    )
    assert body == {
        "type": f"{PROBLEM_TYPES}#insufficient_stock",
        "title": TITLES["insufficient_stock"],
        "status": 409,
        "detail": "short",
        "instance": "r%2F1",
        "error": "insufficient_stock",
        "message": "short",
        "warehouse": "W",
    }
    unnamed = problem(405, {"error": "method_not_allowed"}, "r")
    assert unnamed["detail"] == unnamed["title"] == "Method not allowed"
    foreign = problem(418, {"error": "im_a_teapot"}, "r")
    assert foreign["title"] == "I'm a Teapot"


def test_every_code_the_product_answers_has_a_title_and_a_documented_type() -> None:
    import re
    from pathlib import Path

    from shared_lib.domain.errors import PsiError, _by_code

    root = Path(__file__).resolve().parents[2]
    literals = set()
    for path in (root / "shared_lib" / "http").glob("*.py"):
        literals |= set(re.findall(r'"error": "([a-z_]+)"', path.read_text(encoding="utf-8")))
    literals |= {"invalid_json", "invalid_delivery", "unauthorized", "forbidden"}
    codes = (set(_by_code(PsiError)) - {"error"}) | literals
    assert codes <= set(TITLES), codes - set(TITLES)
    headings = set(re.findall(r"^### (\w+)$", (root / "docs" / "problems.md").read_text(), re.M))
    assert headings == set(TITLES)
