"""The ablation table in Markdown, CSV and LaTeX; a path study's steps in Markdown."""

from __future__ import annotations

import csv
import io
import math
from typing import TYPE_CHECKING

from search.ablation._stats import ArmSummary

if TYPE_CHECKING:
    from search.ablation._path import PathStep

CSV_COLUMNS = (
    "arm",
    "n",
    "mean",
    "std",
    "ci_low",
    "ci_high",
    "delta",
    "delta_ci_low",
    "delta_ci_high",
    "p_value",
    "p_holm",
    "seconds",
)


def _number(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.{digits}f}"


def _p(value: float | None) -> str:
    if value is None or math.isnan(value):
        return ""
    return "<0.0001" if value < 1e-4 else f"{value:.4f}"


def to_csv(rows: list[ArmSummary]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow(
            [row.arm, row.n]
            + [_number(getattr(row, c), 6) for c in CSV_COLUMNS[2:10]]
            + [_number(row.p_holm, 6), _number(row.seconds, 1)]
        )
    return buffer.getvalue()


def _interval(low: float | None, high: float | None) -> str:
    text_low, text_high = _number(low), _number(high)
    return f"[{text_low}, {text_high}]" if text_low and text_high else ""


def table_cells(row: ArmSummary) -> list[str]:
    settled = "" if row.test is None else ("yes" if row.settled else "no")
    return [
        row.arm,
        str(row.n),
        _number(row.mean),
        _number(row.std),
        _interval(row.ci_low, row.ci_high),
        "" if row.delta is None else f"{row.delta:+.4f}",
        _interval(row.delta_ci_low, row.delta_ci_high),
        _p(row.p_value),
        _p(row.p_holm),
        _number(row.effect_size, 2),
        row.test or "",
        settled,
        f"{row.seconds:.0f}",
        row.note or "",
    ]


HEADER = (
    "arm", "n", "mean", "std", "95% CI", "delta", "delta 95% CI", "p", "p (Holm)",
    "effect size", "test", "CI excludes 0", "seconds", "note",
)  # fmt: skip


def to_markdown(rows: list[ArmSummary]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(table_cells(row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_latex(rows: list[ArmSummary]) -> str:
    def escape(text: str) -> str:
        for char, replacement in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"),
                                  ("&", r"\&"), ("#", r"\#"), ("<", r"$<$")):  # fmt: skip
            text = text.replace(char, replacement)
        return text

    columns = "l" + "r" * (len(HEADER) - 1)
    lines = [rf"\begin{{tabular}}{{{columns}}}", r"\toprule"]
    lines.append(" & ".join(escape(h) for h in HEADER) + r" \\")
    lines.append(r"\midrule")
    lines += [" & ".join(escape(c) for c in table_cells(row)) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


FORMATS = {"md": to_markdown, "csv": to_csv, "latex": to_latex}


PATH_HEADER = (
    "step", "flipped", "arm", "n", "mean", "std", "95% CI", "gain", "gain 95% CI", "test",
    "within noise", "change vs baseline", "change 95% CI", "other candidates (mean)", "note",
)  # fmt: skip


def path_cells(row: PathStep) -> list[str]:
    flipped = ", ".join(f"{name}={value}" for name, value in row.flipped.items())
    others = "; ".join(
        f"{arm}: {_number(mean) or 'no finished cell'}" for arm, mean in row.others.items()
    )
    return [
        str(row.step),
        flipped,
        row.arm,
        str(row.n),
        _number(row.mean),
        _number(row.std),
        _interval(row.ci_low, row.ci_high),
        "" if row.gain is None else f"{row.gain:+.4f}",
        _interval(row.gain_ci_low, row.gain_ci_high),
        row.gain_test or "",
        "yes" if row.within_noise else "no",
        "" if row.change is None else f"{row.change:+.4f}",
        _interval(row.change_ci_low, row.change_ci_high),
        others,
        row.note or "",
    ]


def path_to_markdown(rows: list[PathStep]) -> str:
    """The path of a design: path study, one row per step (search.ablation.path_steps)."""
    lines = ["| " + " | ".join(PATH_HEADER) + " |", "|" + "---|" * len(PATH_HEADER)]
    lines += ["| " + " | ".join(path_cells(row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"
