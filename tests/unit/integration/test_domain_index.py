"""DomainIndex: one way to read a row's domain, one wording for every domain error."""

from __future__ import annotations

import pytest

from mgs.integration import DomainIndex


def test_reads_fields_and_dotted_paths():
    rows = [{"data_source": "math", "extra_info": {"domain": "chat"}}, {"data_source": "code", "extra_info": {"domain": "math"}}]
    assert DomainIndex("data_source").of_rows(rows) == ["math", "code"]
    assert DomainIndex("extra_info.domain").of_rows(rows) == ["chat", "math"]
    assert DomainIndex("extra_info.domain").of_values([r["extra_info"] for r in rows]) == ["chat", "math"]
    assert DomainIndex("extra_info.domain").field == "extra_info"


def test_discover_and_ids():
    free = DomainIndex("domain")
    assert free.discover(["math", "chat", "math"]) == ("chat", "math")
    assert free.ids(["math", "chat"], ["chat", "math"]) == [1, 0]
    fixed = DomainIndex("domain", ["math", "chat"], domains_setting="cfg.domains")
    assert fixed.discover(["chat"]) == ("math", "chat")
    assert fixed.ids(["chat", "math", "chat"]) == [1, 0, 1]
    with pytest.raises(ValueError, match=r"domains \['code'\] that cfg.domains \['math', 'chat'\] does not list"):
        fixed.ids(["math", "code"])


@pytest.mark.parametrize("key", ["", ".x", "a..b", None, 3])
def test_bad_keys(key):
    with pytest.raises(ValueError, match="cfg.key must be a column name or a dotted path"):
        DomainIndex(key, key_setting="cfg.key")


def test_row_errors_name_the_key_and_what_is_there():
    index = DomainIndex("extra_info.domain", key_setting="cfg.key")
    with pytest.raises(KeyError, match=r"cfg.key='extra_info.domain': the data has no domain column 'extra_info'; "
                                       r"its columns are \['prompt'\]"):
        index.of_row({"prompt": "p"})
    with pytest.raises(KeyError, match=r"has no key 'domain' \(it holds \['task'\]\)"):
        index.of_row({"extra_info": {"task": "x"}})
    with pytest.raises(ValueError, match=r"1 of 1 rows have no domain \(None or empty\): row 0: None"):
        index.of_row({"extra_info": {"domain": None}})
    with pytest.raises(ValueError, match="duplicates"):
        DomainIndex("d", ["a", "a"])


def test_values_that_are_not_domain_names_are_one_error_naming_them():
    index = DomainIndex("domain", key_setting="cfg.key")
    with pytest.raises(ValueError, match=r"cfg.key='domain': 2 of 3 rows have no domain \(None or empty\): "
                                         r"row 0: None, row 2: ''"):
        index.of_values([None, "math", ""])
    with pytest.raises(ValueError, match=r"domain names are non-empty strings, but 2 of 3 rows hold other values "
                                         r"\(row 0: 0, row 2: 1\); cast the column to strings. A datasets ClassLabel"):
        index.of_values([0, "math", 1])  # what a ClassLabel column gives
    with pytest.raises(ValueError, match="contains '/'"):
        index.discover(["math/easy", "chat"])
