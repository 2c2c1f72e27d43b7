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
    with pytest.raises(ValueError, match=r"a row has no domain \(None\)"):
        index.of_row({"extra_info": {"domain": None}})
    with pytest.raises(ValueError, match="duplicates"):
        DomainIndex("d", ["a", "a"])
