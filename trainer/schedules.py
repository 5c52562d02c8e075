"""Checkpoint schedules: fixed step lists (every, log-spaced, explicit, windows) and an adaptive saver.

Fixed schedules are sorted unique int steps in [0, total]; step s means "after s updates" (0 is
the initialization). A spec string joins parts with "+", e.g. "every:500+window:400-800:5".
"""

from __future__ import annotations

import dataclasses
import math

_KINDS = ("every", "log", "list", "window", "adaptive")
_SPEC_HELP = (
    "use 'every:N', 'log:N_POINTS', 'list:S1,S2,...', 'window:START-STOP:EVERY' or "
    "'adaptive[:min_gap=..,max_gap=..,threshold=..,ema=..]', joined with '+'"
)


def _check_total(total: int) -> None:
    if int(total) != total or total < 0:
        raise ValueError(f"total steps must be a non-negative integer, got {total}.")


def every(n: int, total: int) -> list[int]:
    """0, n, 2n, ... up to total, and total itself."""
    _check_total(total)
    if int(n) != n or n < 1:
        raise ValueError(f"'every' needs a positive integer interval, got {n}.")
    return sorted(set(range(0, total + 1, n)) | {total})


def log_spaced(n_points: int, total: int, first: int = 1) -> list[int]:
    """0 plus `n_points` geometrically spaced steps from `first` to `total`, rounded, deduplicated.

    Rounding collisions at the low end are dropped, so the result may hold fewer than
    `n_points + 1` steps.
    """
    _check_total(total)
    if int(n_points) != n_points or n_points < 1:
        raise ValueError(f"'log' needs a positive integer number of points, got {n_points}.")
    if first < 1 or (total > 0 and first > total):
        raise ValueError(f"'log' needs 1 <= first <= total, got first={first}, total={total}.")
    if total == 0:
        return [0]
    if n_points == 1:
        return [0, total]
    ratio = math.log(total / first) / (n_points - 1)
    pts = {int(round(first * math.exp(ratio * i))) for i in range(n_points)}
    return sorted(pts | {0, total})


def explicit(steps, total: int | None = None) -> list[int]:
    """The given steps, sorted and unique; with `total`, steps past it are dropped."""
    out = set()
    for s in steps:
        if int(s) != s or s < 0:
            raise ValueError(f"checkpoint steps must be non-negative integers, got {s!r}.")
        out.add(int(s))
    if total is not None:
        _check_total(total)
        out = {s for s in out if s <= total}
    return sorted(out)


def dense_window(start: int, stop: int, every: int) -> list[int]:
    """start, start + every, ..., and stop (inclusive): a dense window around a phase change."""
    if int(start) != start or int(stop) != stop or start < 0 or stop < start:
        raise ValueError(f"a window needs integers 0 <= start <= stop, got {start}-{stop}.")
    if int(every) != every or every < 1:
        raise ValueError(f"a window needs a positive integer spacing, got {every}.")
    return sorted(set(range(start, stop + 1, every)) | {stop})


def combine(*schedules) -> list[int]:
    """The sorted union of several step lists."""
    return sorted({int(s) for sched in schedules for s in sched})


@dataclasses.dataclass
class AdaptiveSaver:
    """Save densely while the loss (or an eval) moves fast; deterministic, resumable from a small dict.

    Each call `update(step, loss, eval_value=None)` first smooths the loss,
    `s = ema * s + (1 - ema) * loss` (s starts at the first loss), then returns True (save) when
    (a) `step - last_save >= max_gap`, or (b) `step - last_save >= min_gap` and
    `|s - s_ref| / max(|s_ref|, 1e-12) > threshold`, where s_ref is s at the last save, or the
    same relative change of the latest eval value (unsmoothed) against its value at the last
    save. On a save, `last_save`, s_ref and the eval reference move to the current values.
    Call `mark_saved(step)` when a checkpoint is written for another reason (a fixed schedule).
    The saver assumes a save at step `last_save` (0: the initialization).
    """

    min_gap: int = 10
    max_gap: int = 1000
    threshold: float = 0.05
    ema: float = 0.9
    last_save: int = 0
    smoothed: float = 0.0
    ref_smoothed: float = 0.0
    n_seen: int = 0
    eval_value: float = 0.0
    ref_eval: float = 0.0
    has_eval: int = 0
    has_ref_eval: int = 0

    def __post_init__(self):
        if int(self.min_gap) != self.min_gap or self.min_gap < 1:
            raise ValueError(f"adaptive min_gap must be a positive integer, got {self.min_gap}.")
        if int(self.max_gap) != self.max_gap or self.max_gap < self.min_gap:
            raise ValueError(
                f"adaptive max_gap must be an integer >= min_gap, got max_gap={self.max_gap}, min_gap={self.min_gap}."
            )
        if not self.threshold > 0:
            raise ValueError(f"adaptive threshold must be positive, got {self.threshold}.")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"adaptive ema must be in [0, 1), got {self.ema}.")

    @staticmethod
    def _rel(now: float, ref: float) -> float:
        return abs(now - ref) / max(abs(ref), 1e-12)

    def update(self, step: int, loss: float, eval_value: float | None = None) -> bool:
        """Feed one step's training loss (and optionally an eval value); True if this step should be saved."""
        loss = float(loss)
        if self.n_seen == 0:
            self.smoothed = loss
            self.ref_smoothed = loss
        else:
            self.smoothed = self.ema * self.smoothed + (1.0 - self.ema) * loss
        self.n_seen += 1
        if eval_value is not None:
            self.eval_value, self.has_eval = float(eval_value), 1
            if not self.has_ref_eval:
                self.ref_eval, self.has_ref_eval = self.eval_value, 1
        gap = step - self.last_save
        moved = self._rel(self.smoothed, self.ref_smoothed) > self.threshold
        if self.has_eval and self.has_ref_eval:
            moved = moved or self._rel(self.eval_value, self.ref_eval) > self.threshold
        save = gap >= self.max_gap or (gap >= self.min_gap and moved)
        if save:
            self.mark_saved(step)
        return save

    def mark_saved(self, step: int) -> None:
        """Record a checkpoint written at `step`: gaps and relative changes restart from here."""
        self.last_save = int(step)
        self.ref_smoothed = self.smoothed
        if self.has_eval:
            self.ref_eval, self.has_ref_eval = self.eval_value, 1

    def state_dict(self) -> dict[str, float | int]:
        """All settings and state as a flat dict of numbers (JSON-safe, exact round trip)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict) -> "AdaptiveSaver":
        """Rebuild a saver from `state_dict()` output; it then behaves exactly as the original."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(state) - names
        if unknown:
            raise ValueError(
                f"adaptive saver state has unknown keys {sorted(unknown)}; pass a dict from state_dict()."
            )
        return cls(**state)


_ADAPTIVE_KEYS = ("min_gap", "max_gap", "threshold", "ema")


def _parse_int(text: str, part: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"checkpoint schedule part {part!r} has {text!r} where an integer belongs; {_SPEC_HELP}."
        ) from None


@dataclasses.dataclass(frozen=True)
class ScheduleSpec:
    """A parsed schedule string: fixed parts plus an optional adaptive rule (its settings)."""

    parts: tuple[tuple[str, tuple[int, ...]], ...] = ()
    adaptive: tuple[tuple[str, float], ...] | None = None

    @classmethod
    def parse(cls, text: str) -> "ScheduleSpec":
        """Parse e.g. "every:500+window:400-800:5+adaptive:min_gap=5,max_gap=200"."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"empty checkpoint schedule {text!r}; {_SPEC_HELP}.")
        parts: list[tuple[str, tuple[int, ...]]] = []
        adaptive = None
        for part in text.replace(" ", "").split("+"):
            kind, _, arg = part.partition(":")
            if kind not in _KINDS:
                raise ValueError(f"unknown checkpoint schedule kind {kind!r} in {text!r}; {_SPEC_HELP}.")
            if kind == "adaptive":
                if adaptive is not None:
                    raise ValueError(f"checkpoint schedule {text!r} has two adaptive parts; keep one.")
                adaptive = cls._parse_adaptive(arg, part)
                continue
            if not arg:
                raise ValueError(f"checkpoint schedule part {part!r} has no arguments; {_SPEC_HELP}.")
            if kind in ("every", "log"):
                args = (_parse_int(arg, part),)
            elif kind == "list":
                args = tuple(_parse_int(a, part) for a in arg.split(","))
            else:
                rng, sep, step = arg.partition(":")
                lo, dash, hi = rng.partition("-")
                if not sep or not dash:
                    raise ValueError(f"window part {part!r} must look like 'window:START-STOP:EVERY'.")
                args = (_parse_int(lo, part), _parse_int(hi, part), _parse_int(step, part))
            parts.append((kind, args))
        spec = cls(tuple(parts), adaptive)
        spec.steps(max([a for _, args in parts for a in args] + [1]))  # validate the arguments now
        if adaptive is not None:
            spec.make_saver()
        return spec

    @staticmethod
    def _parse_adaptive(arg: str, part: str) -> tuple[tuple[str, float], ...]:
        out: dict[str, float] = {}
        for item in filter(None, arg.split(",")):
            key, eq, value = item.partition("=")
            if key not in _ADAPTIVE_KEYS or not eq:
                raise ValueError(f"adaptive part {part!r} has {item!r}; use keys {_ADAPTIVE_KEYS} as key=value.")
            try:
                out[key] = float(value)
            except ValueError:
                raise ValueError(f"adaptive part {part!r} has non-numeric value {value!r} for {key}.") from None
        return tuple(sorted(out.items()))

    def steps(self, total: int) -> list[int]:
        """The fixed checkpoint steps for a run of `total` updates (windows and lists cut at total).
        An adaptive rule alone still saves step 0, the initialisation, as every other schedule does."""
        _check_total(total)
        out: list[list[int]] = [] if self.parts else [[0]]
        for kind, args in self.parts:
            if kind == "every":
                out.append(every(args[0], total))
            elif kind == "log":
                out.append(log_spaced(args[0], total))
            elif kind == "list":
                out.append(explicit(args, total))
            else:
                out.append([s for s in dense_window(*args) if s <= total])
        return combine(*out)

    def make_saver(self) -> AdaptiveSaver | None:
        """A fresh `AdaptiveSaver` for the adaptive part (defaults for keys not given), or None."""
        if self.adaptive is None:
            return None
        kw = dict(self.adaptive)
        for key in ("min_gap", "max_gap"):
            if key in kw:
                if kw[key] != int(kw[key]):
                    raise ValueError(f"adaptive {key} must be an integer, got {kw[key]}.")
                kw[key] = int(kw[key])
        return AdaptiveSaver(**kw)

    def __str__(self) -> str:
        """The canonical spec string (parses back to an equal spec)."""
        texts = []
        for kind, args in self.parts:
            if kind == "window":
                texts.append(f"window:{args[0]}-{args[1]}:{args[2]}")
            else:
                texts.append(f"{kind}:{','.join(str(a) for a in args)}")
        if self.adaptive is not None:
            body = ",".join(f"{k}={int(v)}" if k in ("min_gap", "max_gap") else f"{k}={v!r}" for k, v in self.adaptive)
            texts.append(f"adaptive:{body}" if body else "adaptive")
        return "+".join(texts)
