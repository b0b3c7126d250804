"""The composite: an ordered list of ``(matcher, rule)``, first match wins."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import fx

from lrpfx.composites.matchers import Context, Key, Matcher, as_matcher
from lrpfx.rules import Rule

Entry = tuple[Matcher, Rule]
UserRules = Mapping[Key, Rule] | Sequence[Entry] | None


def _user_entries(rules: UserRules) -> list[Entry]:
    if rules is None:
        return []
    if isinstance(rules, Mapping):
        entries = [(as_matcher(k), r) for k, r in rules.items()]
        return sorted(entries, key=lambda e: -e[0].specificity)  # stable: map order kept
    return [(as_matcher(m), r) for m, r in rules]


class Composite:
    """An ordered list of ``(matcher, rule)``; the first match wins.

    Args:
        entries: ``(matcher, rule)`` pairs (or a dict keyed by class, name glob or matcher; in a
            dict, names and positions are tried before classes).
        defaults: entries tried after ``entries``.
    """

    name = "custom"

    def __init__(
        self, entries: UserRules = None,
        defaults: Sequence[Entry] = (),
    ) -> None:
        self.entries: list[Entry] = [*_user_entries(entries), *defaults]

    def rule_for(self, node: fx.Node, ctx: Context) -> Rule | None:
        return next((rule for m, rule in self.entries if m.matches(node, ctx)), None)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.entries)} entries)"
