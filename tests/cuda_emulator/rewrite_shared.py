"""Emulation build step: copies a .cu file, turning each `__shared__` declaration into static storage
that registers itself with the emulator (which poisons it before every block).

    __shared__ int64_t src_row[kBM], dst_row[kBM];
 -> static int64_t src_row[kBM], dst_row[kBM]; ::cuda_emulator::register_shared(src_row, sizeof(src_row), ...); ...

A section attribute cannot do this: GCC ignores it on the static locals of function templates.
Usage: python rewrite_shared.py SOURCE.cu OUTPUT.cpp
"""
from __future__ import annotations

import re
import sys

DECLARATION = re.compile(r"__shared__\s+([^;{}]*);")
DECLARATOR_NAME = re.compile(r"([A-Za-z_]\w*)\s*(?:\[[^\]]*\]\s*)*$")


def split_top_level(text: str) -> list[str]:
    """Splits at commas outside (), [] and <>."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([<":
            depth += 1
        elif ch in ")]>":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def rewrite(match: re.Match) -> str:
    declaration = match.group(1)
    names = []
    for part in split_top_level(declaration):
        name = DECLARATOR_NAME.search(part.strip())
        if name is None:
            raise SystemExit(f"rewrite_shared: cannot parse the __shared__ declaration '{declaration}'")
        names.append(name.group(1))
    registrations = " ".join(
        f'::cuda_emulator::register_shared(&{n}, sizeof({n}), "{n}", __FILE__, __LINE__);' for n in names)
    return f"static {declaration}; {registrations}"


def main(source: str, output: str) -> None:
    text = open(source).read()
    if "extern __shared__" in text:
        raise SystemExit(f"rewrite_shared: {source}: dynamic shared memory is not supported by the emulator")
    # Keep line numbers: every rewrite stays on its line.
    out = f'#line 1 "{source}"\n' + DECLARATION.sub(rewrite, text)
    with open(output, "w") as f:
        f.write(out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
