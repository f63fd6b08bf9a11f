"""What the rules share: severity levels, how figures are written in messages, and what "at chance" means."""

from __future__ import annotations

WARNING, CRITICAL = 1, 2


def cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def fmt(x: float) -> str:
    return f"{x:.4g}"


def fraction(acc: float) -> float:
    """A validation accuracy given as a percentage or a fraction, as a fraction."""
    return float(acc) / 100.0 if float(acc) > 1.0 else float(acc)


def chance_limit(num_classes: int, margin: float) -> tuple[float, float]:
    """(chance, the accuracy at or below which a run reads as at chance)."""
    chance = 1.0 / num_classes
    return chance, chance + margin * (1.0 - chance)
