"""The `fairness:` section of the rules contract: which group attributes the bias rules test.

`Fairness` is what the evaluator reads (it is `RuleSet.fairness`); `FairnessSpec` is the section as
written, and `fairness_problems` its cross-field checks, with paths relative to the section so the
loader can put a file and line on each. Attribute names are keys of `PredictionEvent.groups` and a
reference is one of its values; both are compared as text, so a reference must be written as a string.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

AttributeSelection = Literal["protected", "proxies", "all"]
Loc = tuple[str | int, ...]


class ProtectedAttribute(BaseModel):
    """A protected attribute: its groups must be treated alike."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # The group the others are compared with; None means the most favoured group at each evaluation.
    reference: str | None = Field(default=None, min_length=1)


class ProxyAttribute(BaseModel):
    """An attribute that may stand in for a protected characteristic (the playbook's "ZIP code")."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    proxy_for: str | None = Field(default=None, min_length=1)  # free text, for the operator and evidence


def select(
    protected: Iterable[str], proxies: Iterable[str], which: AttributeSelection
) -> list[tuple[str, bool]]:
    """(attribute, is_proxy) for the attributes a rule's `attributes: which` tests, sorted by name."""
    chosen = [(name, False) for name in protected] if which != "proxies" else []
    chosen += [(name, True) for name in proxies] if which != "protected" else []
    return sorted(chosen)


class Fairness(BaseModel):
    """The declared attributes of a load; empty when no file has a `fairness:` section."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    protected: dict[str, ProtectedAttribute] = Field(default_factory=dict)
    proxies: dict[str, ProxyAttribute] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _names_are_sound(self) -> Fairness:
        """Names are not empty and no attribute is both protected and a proxy."""
        for name in (*self.protected, *self.proxies):
            if not name.strip():
                raise ValueError("an attribute name must not be empty")
        both = sorted(set(self.protected) & set(self.proxies))
        if both:
            raise ValueError(f"attributes both protected and proxies: {', '.join(both)}")
        return self

    def attributes(self, which: AttributeSelection) -> list[tuple[str, bool]]:
        """(attribute, is_proxy) for `which` of the declared attributes, sorted by name."""
        return select(self.protected, self.proxies, which)


# --- the section as written -----------------------------------------------------------------------

# Strict like the rest of the file format (schema._STRICT): a hand-edited file's slips are refused.
_STRICT = ConfigDict(strict=True, extra="forbid")


class ProtectedSpec(BaseModel):
    """One entry of `fairness.protected` as written."""

    model_config = _STRICT

    reference: Any = None  # a string; anything else is refused by fairness_problems with a hint


class ProxySpec(BaseModel):
    """One entry of `fairness.proxies` as written."""

    model_config = _STRICT

    proxy_for: Annotated[str, Field(min_length=1)] | None = None


class FairnessSpec(BaseModel):
    """The `fairness:` section as written."""

    model_config = _STRICT

    protected: dict[str, ProtectedSpec] = {}
    proxies: dict[str, ProxySpec] = {}

    def resolve(self) -> Fairness:
        """The public Fairness (call only on a section without problems)."""
        return Fairness(
            protected={n: ProtectedAttribute(reference=a.reference) for n, a in self.protected.items()},
            proxies={n: ProxyAttribute(proxy_for=a.proxy_for) for n, a in self.proxies.items()},
        )


def fairness_problems(spec: FairnessSpec) -> Iterator[tuple[Loc, str]]:
    """Every cross-field problem of the section (paths relative to it); nothing when it is valid."""
    for name, attribute in spec.protected.items():
        if not name.strip():
            yield ("protected", name), "an attribute name must not be empty"
        value = attribute.reference
        if value is None or isinstance(value, str) and value.strip():
            continue
        if isinstance(value, str):
            yield (
                ("protected", name, "reference"),
                "must not be empty (leave it out for the most favoured group)",
            )
        elif isinstance(value, (list, dict)):
            kind = "a list" if isinstance(value, list) else "a mapping"
            yield ("protected", name, "reference"), f"must be a string naming one group (got {kind})"
        else:
            # YAML reads `01` as 1, `no` as false, `2024-01-01` as a date: only quoted text is certain.
            shown = str(value).lower() if isinstance(value, bool) else str(value)
            yield (
                ("protected", name, "reference"),
                (f"must be a string: group values are compared as text, so quote it (got {shown})"),
            )
    for name in spec.proxies:
        if not name.strip():
            yield ("proxies", name), "an attribute name must not be empty"
        elif name in spec.protected:
            yield (
                ("proxies", name),
                (f"{name!r} is also declared protected; an attribute is either protected or a proxy"),
            )


def selection_problem(spec: FairnessSpec, which: AttributeSelection, defined_at: str | None) -> str | None:
    """Why a bias rule's `attributes: which` selects nothing to test (it would never fire), or None."""
    if select(spec.protected, spec.proxies, which):
        return None
    declared = {"protected": "protected attributes", "proxies": "proxies", "all": "attributes"}[which]
    why = (
        f"the fairness section at {defined_at} declares no {declared}"
        if defined_at
        else ("no file has a fairness section")
    )
    return (
        f"attributes {which!r} selects nothing to test: {why}"
        " (declare them under fairness.protected or fairness.proxies, or remove the rule)"
    )
