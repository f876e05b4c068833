"""Write docs/configuration.md from the config's dataclasses and presets (``--check``: fail if stale).

    python tools/config_doc.py [--out docs/configuration.md] [--check]

Every key of ``detector.config`` with its type, its value in each preset and the one-line meaning
its comment in the source gives (the comment on the key's line, or the comment lines just above it).
"""
from __future__ import annotations

import argparse
import difflib
import inspect
import io
import json
import sys
import tokenize
from pathlib import Path

from detector.cli.base import HelpFormatter, tool_main

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "docs" / "configuration.md"


def field_comments(cls: type) -> dict[str, str]:
    """``{field: comment}`` from a dataclass's source: the comment on the field's line, or the
    block of comment lines right above it (joined)."""
    source = inspect.getsource(cls)
    comments: dict[str, str] = {}
    pending: list[str] = []
    line_of_field: dict[int, str] = {}
    for number, line in enumerate(source.splitlines(), start=1):
        stripped = line.strip()
        head = stripped.split(":", 1)[0]
        if line.startswith("    ") and not line.startswith("     ") and ":" in stripped and head.isidentifier() \
                and not stripped.startswith(("def ", "class ", "return", "if ", "#")):
            line_of_field[number] = head
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type != tokenize.COMMENT:
            continue
        text = token.string.lstrip("#").strip()
        row = token.start[0]
        if row in line_of_field:  # a trailing comment
            comments[line_of_field[row]] = text
        else:
            pending.append((row, text))
    for row, name in line_of_field.items():
        if name in comments:
            continue
        above, look = [], row - 1
        lines_above = dict(pending)
        while look in lines_above:
            above.insert(0, lines_above[look])
            look -= 1
        if above:
            comments[name] = " ".join(above)
    return comments


def _value(value: object) -> str:
    """A value as it would be typed in ``--set`` (JSON for containers), in code style."""
    if isinstance(value, (list, tuple)):
        text = ",".join(map(str, value)) if value else "(empty)"
    elif isinstance(value, dict):
        text = json.dumps(value) if value else "{}"
    else:
        text = json.dumps(value)
    return f"`{text}`"


def render() -> str:
    """The text of docs/configuration.md."""
    from detector.config import PRESETS, SECTIONS, Config, make_config

    presets = sorted(PRESETS)
    flats = {name: make_config(name).flat() for name in presets}
    rows = []
    for section, cls in [("", Config), *SECTIONS.items()]:
        notes = field_comments(cls)
        title = f"`{section}` (`{cls.__module__}.{cls.__name__}`)" if section else "top level (`detector.config.Config`)"
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        rows.append(f"\n## {title}\n\n{doc}\n")
        rows.append("| key | " + " | ".join(presets) + " | meaning |")
        rows.append("| --- | " + " | ".join("---" for _ in presets) + " | --- |")
        for field in cls.__dataclass_fields__.values():
            if field.name == "seed" and section or field.name in SECTIONS or field.name == "preset":
                continue
            key = f"{section}.{field.name}" if section else field.name
            values = [_value(flats[p][key]) for p in presets]
            meaning = notes.get(field.name, "").replace("|", "\\|")
            rows.append(f"| `{key}` | " + " | ".join(values) + f" | {meaning} |")
    header = f"""# Configuration

Every setting of the pipeline, its value in each preset and what it means. **Generated** by
`python tools/config_doc.py` from `detector/config.py` and the sections it holds; a test fails when
this file is stale. Set any key with `--set KEY=VALUE` (`--set svm.C=0.01 finetune.iterations=2000`),
or with `--config FILE.json` (nested as `config.json` of a run). Presets: {", ".join(f"`{p}`" for p in presets)}
(`train_det.py --preset NAME`; `cpu` with `--voc-root`, `demo` without). The top-level `seed`
also seeds every section.
"""
    return header + "\n".join(rows) + "\n"


@tool_main("config_doc.py")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="file to write (default docs/configuration.md)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when the file differs")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text() if args.out.is_file() else ""
        if current != text:
            sys.stdout.writelines(difflib.unified_diff(current.splitlines(True), text.splitlines(True),
                                                       str(args.out), "generated"))
            raise SystemExit(f"config_doc.py: {args.out} is stale; run python tools/config_doc.py")
        print(f"{args.out} is up to date")
        return
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
