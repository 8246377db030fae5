"""The spec grammar: how a defense, attack, model or dataset is named on the command line and in suites.

* ``name`` -- the entry with its defaults;
* ``name:key=value,key=value`` -- overrides (values parsed by the type of the default; each key at most once);
* parametric names declared by a regular expression, e.g. ``random_p0.01`` -> ``random`` with ``p=0.01``;
* stages after ``+`` (defense specs only): ``rquant:bits=4+secded:word=32`` is the defense ``rquant:bits=4`` whose
  memory is protected by the protection ``secded:word=32`` (:func:`split_stages`). A ``+`` followed by a letter
  starts a stage, so a number such as ``1e+2`` stays one value.

Rates are fractions (``0.01`` = 1%); ``parse_rate`` also reads percentages (``1%``) and :func:`canonical_rate`
rounds away binary noise so that ``0.7%`` and ``0.007`` name the same attack.
"""

from __future__ import annotations

import math
import re
from typing import Any

from .errors import UsageError

__all__ = ["SpecError", "parse_value", "parse_spec", "format_spec", "format_value", "spec_template",
           "canonical_rate", "parse_rate", "split_stages", "join_stages"]


class SpecError(UsageError):
    """An unknown name or parameter, a repeated key, or a value that does not parse or is out of range."""


def canonical_rate(p: float) -> float:
    """A rate (or any float parameter) rounded to 12 significant digits (``0.7 / 100`` -> ``0.007``): one float
    per decimal value, so that equal values written differently name the same cache entry."""
    p = float(p)
    if p == 0 or not math.isfinite(p):
        return p
    return float(f"{p:.12g}")


def parse_rate(text: str, what: str = "rate") -> float:
    """``'0.01'`` or ``'1%'`` -> 0.01 (a fraction in [0, 1], canonical); :class:`SpecError` otherwise."""
    t = str(text).strip()
    pct = t.endswith("%")
    try:
        v = float(t[:-1] if pct else t)
    except ValueError:
        raise SpecError(f"invalid {what} {text!r}: give a fraction like 0.01 (= 1%) or a percentage like 1%") \
            from None
    if pct:
        v /= 100
    if not (math.isfinite(v) and 0 <= v <= 1):
        raise SpecError(f"{what} {text!r} is outside [0, 1] (rates are fractions: 0.01 = 1%)")
    return canonical_rate(v)


def parse_value(text: str, default: Any):
    """Parse ``text`` by the type of ``default`` (bool, int, float, str; None: best guess)."""
    t = text.strip()
    low = t.lower()
    if low in ("none", "null"):
        if isinstance(default, bool):
            raise SpecError(f"expected a boolean (true/false), got {text!r}")
        return None
    if isinstance(default, bool):
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise SpecError(f"expected a boolean (true/false), got {text!r}")
    if isinstance(default, int):
        try:
            return int(t)
        except ValueError:
            try:
                f = float(t)
            except ValueError:
                raise SpecError(f"expected an integer, got {text!r}") from None
            if f.is_integer():
                return int(f)
            raise SpecError(f"expected an integer, got {text!r}") from None
    if isinstance(default, float) or default is None:
        try:
            v = float(t)
            if default is None and re.fullmatch(r"[+-]?\d+", t):
                return int(t)
            return canonical_rate(v)
        except ValueError:
            if isinstance(default, float):
                raise SpecError(f"expected a number, got {text!r}") from None
            return t
    return t


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``'name:k=v,k2=v2'`` -> ``('name', {'k': 'v', 'k2': 'v2'})`` (values unparsed; a repeated key is refused)."""
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError(f"a spec must be a non-empty string like 'name' or 'name:key=value', got {spec!r}")
    name, _, rest = spec.strip().partition(":")
    kv: dict[str, str] = {}
    if rest.strip():
        for part in rest.split(","):
            if not part.strip():
                continue
            k, eq, v = part.partition("=")
            if not eq or not k.strip():
                raise SpecError(f"in {spec!r}: {part!r} is not key=value")
            k = k.strip()
            if k in kv:
                raise SpecError(f"in {spec!r}: {k!r} is given twice ({k}={kv[k]} and {k}={v.strip()})")
            kv[k] = v.strip()
    return name.strip(), kv


_STAGE = re.compile(r"\+(?=\s*[A-Za-z])")


def split_stages(spec: str) -> tuple[str, list[str]]:
    """``'rquant:bits=4+secded:word=32+radar'`` -> ``('rquant:bits=4', ['secded:word=32', 'radar'])``.

    Every part must be non-empty (:class:`SpecError` otherwise); parts are stripped but not parsed."""
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError(f"a spec must be a non-empty string like 'name' or 'name:key=value', got {spec!r}")
    parts = [p.strip() for p in _STAGE.split(spec.strip())]
    if any(not p or p.endswith("+") for p in parts) or parts[0].startswith("+"):
        raise SpecError(f"in {spec!r}: a '+' must join two specs, as in 'rquant+secded' (a defense, then "
                        "protections)")
    return parts[0], parts[1:]


def join_stages(base: str, stages) -> str:
    """Inverse of :func:`split_stages`."""
    return "+".join([base, *stages])


def format_value(v) -> str:
    """A parameter value as written in a spec (``true``, ``none``, ``0.01``)."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v) if isinstance(v, float) else str(v)


def format_spec(name: str, params: dict, defaults: dict | None = None, pattern: re.Pattern | None = None) -> str:
    """Canonical spec string; with ``defaults`` only the parameters that differ from them are written.

    With a parametric ``pattern`` (e.g. ``random_p(?P<p>...)``) its parameters go into the name
    (``random_p0.01``) whenever that name parses back to the same values.
    """
    in_name: dict = {}
    if pattern is not None:
        template = spec_template(pattern.pattern)
        if template is not None:
            try:
                cand = template.format(**{k: format_value(params[k]) for k in pattern.groupindex})
            except KeyError:
                cand = None
            m = pattern.fullmatch(cand) if cand else None
            if m and all(parse_value(m.group(k), params[k]) == params[k] for k in pattern.groupindex):
                name, in_name = cand, dict.fromkeys(pattern.groupindex)
    items = [(k, v) for k, v in sorted(params.items())
             if k not in in_name and (defaults is None or defaults.get(k, object()) != v)]
    return name if not items else name + ":" + ",".join(f"{k}={format_value(v)}" for k, v in items)


def spec_template(regex: str) -> str | None:
    """``'random_p(?P<p>[0-9.]+)'`` -> ``'random_p{p}'`` (None if the rest is not literal text)."""
    t = re.sub(r"\(\?P<(\w+)>(?:[^()]|\([^()]*\))*\)", r"{\1}", regex)
    rest = re.sub(r"\{\w+\}", "", t)
    if re.search(r"[\\^$.|?*+()\[\]{}]", rest):
        return None
    return t
