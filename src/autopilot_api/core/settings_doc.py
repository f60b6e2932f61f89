"""The configuration table of the README, generated from Settings and `.env.example`.

`python -m autopilot_api.core.settings_doc` rewrites the README block; a test fails when the two
drift apart.
"""

from __future__ import annotations

import re
from pathlib import Path

from autopilot_api.core.config import PROJECT_ROOT, Settings

START = "<!-- settings:start -->"
END = "<!-- settings:end -->"
README = PROJECT_ROOT / "README.md"


def _comments() -> dict[str, str]:
    lines = (PROJECT_ROOT / ".env.example").read_text().splitlines()
    comments = {}
    for index, line in enumerate(lines):
        match = re.match(r"^#?\s*([A-Z][A-Z0-9_]+)=", line)
        if match and index > 0:
            comments[match.group(1)] = lines[index - 1].removeprefix("# ").strip()
    return comments


def _default(name: str) -> str:
    field = Settings.model_fields[name]
    if name in ("local_data_dir", "tools_dir"):
        return f"`{Path(str(Settings.model_fields[name].default)).name}`"
    default = field.get_default(call_default_factory=True)
    if default is None or default == []:
        return "—"
    return f"`{str(default).lower() if isinstance(default, bool) else default}`"


def setting_default(name: str) -> str:
    """A setting's default as the table shows it (`—` for none)."""
    return _default(name)


def setting_comment(env: str) -> str:
    """A setting's one-line comment from `.env.example` ('' when it is not there)."""
    path = PROJECT_ROOT / ".env.example"
    return _comments().get(env, "") if path.is_file() else ""


def settings_table() -> str:
    comments = _comments()
    rows = ["| Setting | Default | What it does |", "|---|---|---|"]
    for name in Settings.model_fields:
        env = name.upper()
        rows.append(f"| `{env}` | {_default(name)} | {comments.get(env, '')} |")
    return "\n".join(rows)


def readme_with_table(readme: str) -> str:
    block = f"{START}\n{settings_table()}\n{END}"
    return re.sub(re.escape(START) + r".*?" + re.escape(END), block, readme, flags=re.S)


def main() -> None:
    text = README.read_text()
    README.write_text(readme_with_table(text))


if __name__ == "__main__":
    main()
