r"""Example sets: the texts a request is compared with, from the policy, files and shipped presets.

A file holds one example per line; blank lines and lines starting with `#` are skipped. An example that itself
starts with `#` (a Markdown heading, "### Instruction:", a shell comment) is written with a backslash before it:
`\### System: ...` is the example `### System: ...`. A leading backslash is always taken off, so `\\x` is `\x`.
A file named `*.jsonl` holds one JSON object per line instead, and its "text" is the example (other keys are
ignored; a line starting with `#` is a comment there too, and no backslash is taken off).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Preset = Literal["prompt_injection"]
PRESETS = Path(__file__).resolve().parent / "presets"


class ExamplesError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ExampleSet:
    attacks: tuple[str, ...]
    labels: tuple[str, ...]  # where each attack example comes from, for logs: "prompt_injection:12", "examples[0]"
    benign: tuple[str, ...]


def preset_files(preset: Preset) -> tuple[Path, Path]:
    """The attack file and the benign contrast file of a shipped preset."""
    return PRESETS / f"{preset}.txt", PRESETS / f"{preset}_benign.txt"


def read_examples(path: str | Path) -> list[tuple[int, str]]:
    """(line number, example) for every example in the file."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ExamplesError(f"cannot read examples from {path}: {exc.strerror or exc}") from exc
    jsonl = Path(path).suffix.lower() == ".jsonl"
    out: list[tuple[int, str]] = []
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if jsonl:
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ExamplesError(f"{path}:{number}: not valid JSON: {exc.msg}") from exc
            text = item.get("text") if isinstance(item, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise ExamplesError(f'{path}:{number}: a JSON line needs a non-empty "text" string')
            line = text.strip()
        elif line.startswith("\\"):
            line = line[1:].strip()  # an escaped example: "\# AI agents ..." is "# AI agents ..."
            if not line:
                continue
        out.append((number, line))
    return out


def collect(
    *,
    examples: tuple[str, ...] = (),
    examples_file: str | None = None,
    preset: Preset | None = None,
    benign_examples: tuple[str, ...] = (),
    benign_file: str | None = None,
) -> ExampleSet:
    """Every attack example (deduplicated, first source wins) and every benign one. Reads files: call off the loop."""
    attacks: dict[str, str] = {}
    benign: dict[str, None] = {}
    if preset is not None:
        attack_path, benign_path = preset_files(preset)
        for number, text in read_examples(attack_path):
            attacks.setdefault(text, f"{preset}:{number}")
        benign.update(dict.fromkeys(text for _, text in read_examples(benign_path)))
    for index, text in enumerate(examples):
        if text.strip():
            attacks.setdefault(text.strip(), f"examples[{index}]")
    if examples_file is not None:
        name = Path(examples_file).name
        for number, text in read_examples(examples_file):
            attacks.setdefault(text, f"{name}:{number}")
    benign.update(dict.fromkeys(t.strip() for t in benign_examples if t.strip()))
    if benign_file is not None:
        benign.update(dict.fromkeys(text for _, text in read_examples(benign_file)))
    if not benign:
        # The contrast needs a benign side: ordinary requests stand in for a policy that names none.
        benign.update(dict.fromkeys(text for _, text in read_examples(PRESETS / "ordinary.txt")))
    for text in attacks:
        benign.pop(text, None)  # a text listed as both is an attack
    if not attacks:
        raise ExamplesError("no attack examples: give examples, examples_file or preset")
    return ExampleSet(tuple(attacks), tuple(attacks.values()), tuple(benign))
