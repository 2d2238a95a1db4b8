"""import: another directory's rules join a ruleset (shared segments across brands)."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.memory import MemoryStore
from dsl.diagnostics import RulesetError
from dsl.loader import load_path, read_sources
from engine.reloader import RulesetReloader
from engine.service import Arbiter

SHARED = """
profile { spend: number = 0 }
segment big_spender = profile.spend > 500
"""
BRAND = """import "../shared"

placement home { channels: web }
action vip { placements: home value: 10 when: big_spender }
"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "segments.arb").write_text(SHARED)
    (tmp_path / "brand").mkdir()
    (tmp_path / "brand" / "rules.arb").write_text(BRAND)
    return tmp_path


def test_imported_rules_join_the_ruleset(tree: Path) -> None:
    rs = load_path(tree / "brand")
    assert [s.name for s in rs.segments] == ["big_spender"]
    assert any(p.endswith("segments.arb") for p in rs.sources)
    arb = Arbiter(rs, MemoryStore(), seed=1)
    arb.track(user_id="u", event_type="visit", traits={"spend": 900.0})
    assert arb.decide(user_id="u", placement="home").actions[0].action_id == "vip"


def test_the_revision_covers_imported_files(tree: Path) -> None:
    before = load_path(tree / "brand").revision
    (tree / "shared" / "segments.arb").write_text(SHARED.replace("500", "600"))
    assert load_path(tree / "brand").revision != before


def test_missing_import_is_a_positioned_error(tree: Path) -> None:
    (tree / "brand" / "rules.arb").write_text(BRAND.replace("../shared", "../nowhere"))
    with pytest.raises(RulesetError) as info:
        load_path(tree / "brand")
    rendered = info.value.render()
    assert "rules.arb:1:1: error: cannot import \"../nowhere\"" in rendered


def test_ids_stay_unique_across_imports(tree: Path) -> None:
    (tree / "brand" / "more.arb").write_text("segment big_spender = profile.spend > 1\n")
    with pytest.raises(RulesetError) as info:
        load_path(tree / "brand")
    assert "segment 'big_spender' is already defined as a segment at" in info.value.render()


def test_import_cycles_are_harmless(tree: Path) -> None:
    (tree / "shared" / "back.arb").write_text('import "../brand"\n')
    files = read_sources(tree / "brand")
    assert sum(p.endswith(".arb") for p in files) == 3


def test_reloader_watches_imported_files(tree: Path) -> None:
    arb = Arbiter(load_path(tree / "brand"), MemoryStore(), seed=1)
    reloader = RulesetReloader(tree / "brand", arb)
    before = arb.ruleset.revision
    (tree / "shared" / "segments.arb").write_text(SHARED.replace("500", "700") + "\n")
    result = reloader.poll()
    assert result is not None and result.accepted and arb.ruleset.revision != before
