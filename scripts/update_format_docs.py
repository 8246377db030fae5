"""Regenerate the field tables of docs/formats.md from the declared fields (bitbench.configs.format_docs)."""
from pathlib import Path

from bitbench.configs.format_docs import update

path = Path(__file__).resolve().parents[1] / "docs" / "formats.md"
path.write_text(update(path.read_text(encoding="utf-8")), encoding="utf-8")
print(f"wrote {path}")
