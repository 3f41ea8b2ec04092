"""examples/fleetboot.yaml against the configuration model (issue 11, item 14): it
loads, every value is the model's default unless its line says "(example)" (and
then names the default), and every section of the model is shown. New keys may
be added to the model without touching the example; a changed default fails here."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from fleetboot.config import Settings

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fleetboot.yaml"
_KEY = re.compile(r"^(\s*)([A-Za-z0-9_]+):")


def _marked_examples(text: str) -> set[str]:
    """Dotted keys whose line carries "(example)" (keys under them count too)."""
    stack: list[tuple[int, str]] = []
    marked = set()
    for line in text.splitlines():
        found = _KEY.match(line)
        if not found or line.lstrip().startswith("#"):
            continue
        indent = len(found.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, found.group(2)))
        if "(example)" in line:
            marked.add(".".join(k for _, k in stack))
    return marked


def _leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_leaves(item, f"{prefix}.{key}" if prefix else key))
        return out
    return {prefix: value}


def test_every_value_is_the_default_unless_marked_as_an_example() -> None:
    text = EXAMPLE.read_text()
    raw = yaml.safe_load(text)
    loaded = _leaves(Settings.model_validate(raw).model_dump())  # the file is valid as it is
    marked = _marked_examples(text)
    defaults = _leaves(Settings().model_dump())
    shown = {key: loaded[key] for key in _leaves(raw)}
    drifted = {k: (v, defaults.get(k)) for k, v in shown.items()
               if k not in marked and not any(k.startswith(m + ".") for m in marked)
               and v != defaults.get(k)}
    assert not drifted, f"(shown, default) differ for {drifted}"
    for key in marked:  # an example value is one the model would not choose by itself
        assert shown[key] != defaults.get(key), f"{key} is marked (example) but is the default"
        line = next(ln for ln in text.splitlines() if re.match(rf"\s*{key.split('.')[-1]}:", ln)
                    and "(example)" in ln)
        assert "default" in line, f"{key}: say what the default is"


def test_every_section_and_proxydhcp_are_documented() -> None:
    shown = yaml.safe_load(EXAMPLE.read_text())
    assert set(Settings.model_fields) <= set(shown), "a section of the model is missing"
    assert "proxy" in shown["dhcp"]
    text = EXAMPLE.read_text()
    assert "proxyDHCP" in text and "beside the site's own DHCP server" in text


def test_an_old_drift_would_be_caught() -> None:
    stale = EXAMPLE.read_text().replace("9: {name: x86-64 UEFI (EBC)", "9: {name: x86-64 UEFI")
    loaded = Settings.model_validate(yaml.safe_load(stale))
    assert loaded.architectures != Settings().architectures
