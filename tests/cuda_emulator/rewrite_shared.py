"""Emulation build step: copies a .cu file, turning each `__shared__` declaration into static storage
that registers itself with the emulator (which poisons it before every block), and each
`extern __shared__` array (dynamic shared memory) into a pointer to the launch's buffer.

    __shared__ int64_t src_row[kBM], dst_row[kBM];
 -> static int64_t src_row[kBM], dst_row[kBM]; ::cuda_emulator::register_shared(src_row, sizeof(src_row), ...); ...

A section attribute cannot do this: GCC ignores it on the static locals of function templates.
Usage: python rewrite_shared.py SOURCE.cu OUTPUT.cpp
"""
from __future__ import annotations

import re
import sys

DECLARATION = re.compile(r"(?<!extern )__shared__\s+([^;{}]*);")
# extern __shared__ __align__(16) unsigned char smem[];  (dynamic shared memory: one per kernel)
DYNAMIC = re.compile(r"extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?([^;{}\[]*?)\s*([A-Za-z_]\w*)\s*\[\s*\]\s*;")
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


def rewrite_dynamic(match: re.Match) -> str:
    element, name = match.group(1).strip(), match.group(2)
    return (f"{element}* const {name} = static_cast<{element}*>("
            f'::cuda_emulator::dynamic_shared_memory("{name}", __FILE__, __LINE__));')


def main(source: str, output: str) -> None:
    text = open(source).read()
    # Keep line numbers: every rewrite stays on its line.
    text = DYNAMIC.sub(rewrite_dynamic, text)
    if "extern __shared__" in text:
        raise SystemExit(f"rewrite_shared: {source}: cannot parse an extern __shared__ declaration")
    out = f'#line 1 "{source}"\n' + DECLARATION.sub(rewrite, text)
    with open(output, "w") as f:
        f.write(out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
