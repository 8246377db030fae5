"""Registry machinery (timm style): a decorator on a plain class or function is the whole registration.

Entries are classes or factory functions whose parameters all have defaults; they are looked up by spec strings
(see :mod:`.spec`). A registry knows the modules that hold its built-in entries and imports them on first lookup,
so an entry is found whatever was imported before; third-party packages add entries through an entry-point group
(``bitbench.defenses``, ``bitbench.attacks``, ...): the entry point names a module (imported; its decorators
register) or a class/factory (registered under the entry point's name).

Errors: an unknown name or parameter, or a value that does not parse, is a :class:`~.spec.SpecError`; an entry's
constructor reports a bad parameter value by raising :class:`~.spec.SpecError` (or any ``UsageError``) itself. Any
other exception from a constructor is a bug and propagates unchanged.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import inspect
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable

from .errors import UsageError
from .spec import SpecError, format_spec, format_value, join_stages, parse_spec, parse_value, split_stages

__all__ = ["Registry", "RegistryEntry", "StagedRegistry"]


@dataclass
class RegistryEntry:
    name: str
    obj: Callable
    params: dict  # name -> default
    doc: str
    pattern: re.Pattern | None = None
    pattern_help: str | None = None
    param_docs: dict = field(default_factory=dict)
    source: str = "builtin"
    aliases: tuple = ()

    def describe(self) -> str:
        return self.doc.strip().splitlines()[0] if self.doc and self.doc.strip() else ""


def _signature_params(obj) -> dict:
    sig = inspect.signature(obj)
    out = {}
    for p in sig.parameters.values():
        if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is inspect.Parameter.empty:
            raise TypeError(f"registered entry {obj!r}: parameter {p.name!r} has no default (every parameter "
                            "needs one)")
        out[p.name] = p.default
    return out


def _param_docs(doc: str) -> dict:
    """``name: text`` lines of an ``Args:``/``Parameters:`` docstring section."""
    docs, on = {}, False
    for line in (doc or "").splitlines():
        s = line.strip()
        if s in ("Args:", "Parameters:"):
            on = True
            continue
        if on:
            m = re.match(r"(\w+)(?:\s*\(.*?\))?:\s*(.*)", s)
            if m:
                docs[m.group(1)] = m.group(2)
            elif not s or s.endswith(":"):
                on = False if s.endswith(":") else on
    return docs


class Registry:
    """A named collection of entries of one kind (``'defense'``, ``'attack'``)."""

    def __init__(self, kind: str, entry_point_group: str | None = None, builtins: Iterable[str] = ()):
        self.kind = kind
        self.group = entry_point_group
        self.builtins = tuple(builtins)  # modules whose import registers built-in entries (declared from above)
        self._entries: dict[str, RegistryEntry] = {}
        self._aliases: dict[str, str] = {}  # other name -> registered name
        self._loaded_builtins = False
        self._loaded_entry_points = False
        self.entry_point_errors: dict[str, str] = {}

    def add_builtins(self, *modules: str) -> None:
        """Declare modules whose import registers entries; they are imported on the next lookup. The packages above
        the core declare their own (the core names no module above it)."""
        new = tuple(m for m in modules if m not in self.builtins)
        if new:
            self.builtins += new
            self._loaded_builtins = False

    def _load(self) -> None:
        """Import the declared built-in modules (once each), then the entry points (once)."""
        if not self._loaded_builtins:
            self._loaded_builtins = True
            for mod in self.builtins:
                importlib.import_module(mod)
        self.load_entry_points()

    # -- registration ------------------------------------------------------------------------------------------
    def register(self, name: str | Callable | None = None, *, pattern: str | None = None,
                 pattern_help: str | None = None, override: bool = False, aliases: Iterable[str] = (),
                 doc: str | None = None):
        """Decorator: ``@REG.register('name')`` / ``@REG.register`` on a class or factory function.

        ``pattern`` is a regular expression for parametric names whose named groups are parameters
        (e.g. ``r'random_p(?P<p>[0-9.eE+-]+)'``); ``aliases`` are other names that find the entry (``lenet`` for
        ``lenet5``); they are not listed as entries of their own. ``doc`` replaces the object's docstring as the
        entry's documentation (summary line and ``Args:`` section), e.g. for a class registered from elsewhere.
        """
        if callable(name) and not isinstance(name, str):
            return self.register()(name)

        def deco(obj):
            n = name or getattr(obj, "name", None) or obj.__name__.lower()
            if not re.fullmatch(r"[A-Za-z][\w.\-]*", n):
                raise ValueError(f"invalid {self.kind} name {n!r}: letters, digits, '_', '-', '.'")
            if n in self._entries and not override and self._entries[n].obj is not obj:
                raise ValueError(f"{self.kind} {n!r} is already registered")
            for a in aliases:
                if a in self._entries or self._aliases.get(a, n) != n:
                    raise ValueError(f"{self.kind} alias {a!r} is already a name or an alias of another entry")
            text = inspect.cleandoc(doc) if doc is not None else inspect.getdoc(obj) or ""
            init = obj.__init__ if inspect.isclass(obj) else obj
            init_doc = inspect.getdoc(init) or ""
            self._entries[n] = RegistryEntry(
                name=n, obj=obj, params=_signature_params(init), doc=text,
                pattern=re.compile(pattern) if pattern else None, pattern_help=pattern_help,
                param_docs=(_param_docs(init_doc) | _param_docs(text)) if doc is not None
                else (_param_docs(text) | _param_docs(init_doc)),
                source=getattr(obj, "__module__", "?"), aliases=tuple(aliases))
            self._aliases.update({a: n for a in aliases})
            return obj

        return deco

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)
        self._aliases = {a: n for a, n in self._aliases.items() if n != name}

    def load_entry_points(self, force: bool = False) -> None:
        """Import third-party entries from the entry-point group (once)."""
        if self.group is None or (self._loaded_entry_points and not force):
            return
        self._loaded_entry_points = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=self.group):
            try:
                obj = ep.load()
                if callable(obj) and not inspect.ismodule(obj) and ep.name not in self._entries:
                    self.register(ep.name)(obj)  # refuses e.g. a parameter without a default
                    self._entries[ep.name].source = f"entry point {ep.value}"
            except Exception as e:  # a broken plugin must not break the benchmark; it is reported by `list`
                self.entry_point_errors[ep.name] = f"{type(e).__name__}: {e}"

    # -- lookup ------------------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def list(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style wildcard (``'rand*'``)."""
        return [n for n in self.names() if fnmatch.fnmatchcase(n, pattern)]

    def entry(self, name: str) -> RegistryEntry:
        self._load()
        name = self._aliases.get(name, name)
        if name in self._entries:
            return self._entries[name]
        raise SpecError(self._unknown(name))

    def __contains__(self, name: str) -> bool:
        try:
            self.resolve(name)
            return True
        except SpecError:
            return False

    def _unknown(self, name: str) -> str:
        names = self.names()
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        pats = [e.pattern_help for e in self._entries.values() if e.pattern_help]
        msg = f"unknown {self.kind} {name!r}."
        if close:
            msg += f" Did you mean: {', '.join(close)}?"
        msg += f" Registered {self.kind}s: {', '.join(names) or '(none)'}"
        if pats:
            msg += f"; parametric forms: {', '.join(pats)}"
        return msg

    def resolve(self, spec: str) -> tuple[RegistryEntry, dict]:
        """Spec string -> (entry, full parameter dict with defaults filled in and values parsed)."""
        name, kv = parse_spec(spec)
        self._load()
        entry = self._entries.get(self._aliases.get(name, name))
        raw: dict[str, str] = {}
        if entry is None:
            for e in self._entries.values():
                m = e.pattern.fullmatch(name) if e.pattern else None
                if m:
                    entry = e
                    raw = {k: v for k, v in m.groupdict().items() if v is not None}
                    break
        if entry is None:
            raise SpecError(self._unknown(name))
        for k in kv:
            if k in raw:
                raise SpecError(f"{spec!r} sets {k!r} twice (in the name and as key={k})")
        raw.update(kv)
        params = dict(entry.params)
        for k, v in raw.items():
            if k not in entry.params:
                close = difflib.get_close_matches(k, list(entry.params), n=2, cutoff=0.5)
                hint = f" Did you mean {', '.join(close)}?" if close else ""
                raise SpecError(f"{self.kind} {entry.name!r} has no parameter {k!r}.{hint} Valid parameters: "
                                + ", ".join(f"{p}={format_value(d)}" for p, d in entry.params.items()))
            try:
                params[k] = parse_value(v, entry.params[k])
            except SpecError as e:
                raise SpecError(f"{self.kind} {entry.name!r}, parameter {k!r}: {e}") from None
        return entry, params

    def create(self, spec: str, **overrides):
        """Instantiate the entry named by ``spec`` (``overrides`` are already-typed parameter values).

        A bad parameter value that the constructor reports (any ``UsageError``) comes back as a
        :class:`SpecError` naming the spec; other exceptions are bugs and propagate unchanged."""
        entry, params = self.resolve(spec)
        for k in overrides:
            if k not in entry.params:
                raise SpecError(f"{self.kind} {entry.name!r} has no parameter {k!r}; valid: {list(entry.params)}")
        params.update(overrides)
        try:
            obj = entry.obj(**params)
        except UsageError as e:
            raise SpecError(f"{self.kind} {spec!r}: {e}") from e
        try:
            obj.registry_name = entry.name
            obj.params = dict(params)
            obj.spec = format_spec(entry.name, params, entry.params, entry.pattern)
        except AttributeError:
            pass
        return obj

    def canonical(self, spec: str) -> str:
        """The canonical spec (name plus only the non-default parameters, sorted)."""
        entry, params = self.resolve(spec)
        return format_spec(entry.name, params, entry.params, entry.pattern)

    def describe(self) -> list[dict]:
        """One dict per entry: name, summary, parameters with defaults and docs, parametric form, source."""
        out = []
        for n in self.names():
            e = self._entries[n]
            out.append({"name": n, "summary": e.describe(), "params": dict(e.params),
                        "param_docs": dict(e.param_docs), "form": e.pattern_help, "source": e.source,
                        "aliases": list(e.aliases)})
        return out


class StagedRegistry(Registry):
    """A registry whose specs may name stages of a second registry after ``+`` (:func:`~.spec.split_stages`): the
    defense registry, whose stages are protections (``rquant+secded:word=32``).

    :meth:`create` builds the base entry, then each stage, and passes them to the *composer* (``composer(base,
    [stage, ...])`` returns the composed object), which the package that defines the stages sets
    (:meth:`set_composer`; for defenses: ``bitbench.defenses.protection``); :meth:`canonical` is the base's
    canonical spec joined with each stage's; :meth:`resolve` resolves the base (its entry and parameters) after
    checking every stage. A stage named twice is refused.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None, builtins: Iterable[str] = (), *,
                 stages: Registry):
        super().__init__(kind, entry_point_group, builtins)
        self.stages = stages
        self.composer: Callable | None = None

    def set_composer(self, composer: Callable) -> None:
        """``composer(base, stages) -> composed object`` (raising :class:`SpecError` where they do not combine)."""
        self.composer = composer

    def _split(self, spec: str) -> tuple[str, list[str]]:
        base, stages = split_stages(spec)
        seen = {}
        for s in stages:
            entry, _ = self.stages.resolve(s)
            if entry.name in seen:
                raise SpecError(f"{spec!r} names {self.stages.kind} {entry.name!r} twice ({seen[entry.name]!r} and "
                                f"{s!r})")
            seen[entry.name] = s
        return base, stages

    def resolve(self, spec: str) -> tuple[RegistryEntry, dict]:
        """The base entry and its parameters (every ``+`` stage is checked, not returned; see :meth:`canonical`)."""
        base, _ = self._split(spec)
        return super().resolve(base)

    def create(self, spec: str, **overrides):
        """The base object (``overrides`` apply to it), composed with the stages when the spec has any."""
        base, stages = self._split(spec)
        obj = super().create(base, **overrides)
        if not stages:
            return obj
        parts = [self.stages.create(s) for s in stages]   # loads the stages' package, which sets the composer
        if self.composer is None:
            raise SpecError(f"{self.kind} {obj.spec!r} cannot be combined with {self.stages.kind}s ({spec!r}): no "
                            f"package that composes them is loaded")
        return self.composer(obj, parts)

    def canonical(self, spec: str) -> str:
        base, stages = self._split(spec)
        return join_stages(super().canonical(base), [self.stages.canonical(s) for s in stages])
