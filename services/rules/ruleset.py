"""A loaded, compiled rule set: what the engine evaluates and swaps atomically."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cel

from .expr import Template
from .schema import ActionKind, ActionSpec, Mode, RuleSpec


@dataclass(frozen=True)
class CompiledAction:
    index: int  # position in the rule's actions: part of the decision id
    spec: ActionSpec
    summary: Template | None = None  # alerts only
    labels: tuple[tuple[str, Template], ...] = ()  # alerts only, sorted by name

    @property
    def kind(self) -> ActionKind:
        return self.spec.kind


@dataclass(frozen=True)
class CompiledRule:
    spec: RuleSpec
    path: Path
    position: int  # index in its file: the tie-breaker after priority and file
    program: cel.Program = field(repr=False, compare=False)
    actions: tuple[CompiledAction, ...]

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def mode(self) -> Mode:
        return self.spec.mode


@dataclass(frozen=True)
class RuleSet:
    #: Short sha256 over the file names and contents: stamped on every decision
    #: so an output can be traced to the exact rules that produced it.
    version: str
    #: In evaluation order: priority, then file name, then position in the file.
    rules: tuple[CompiledRule, ...]
    files: tuple[Path, ...]

    def rule(self, rule_id: str) -> CompiledRule:
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)
