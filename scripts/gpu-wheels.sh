#!/usr/bin/env bash
# Download, here, the wheels the GPU machine lacks for scripts/gpu-check.sh into .whl/
# (git-ignored; it travels with the working tree to that machine, which reaches no package
# registry). Exact pins from scripts/gpu-wheels.lock, --no-deps (every dependency is named
# there), CPython 3.12 manylinux x86-64 builds.
#   scripts/gpu-wheels.sh      download what is missing, check the set, print its size
# Checks (exit 1 on any): one wheel per pin and nothing else; every dependency a wheel declares
# for Linux/CPython 3.12 is pinned or preinstalled on the GPU machine; the pins equal the
# versions in the project's venv (.venv) where it has the package; wheels plus the tracked
# files stay within 64 MiB (what may travel).
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
lock=scripts/gpu-wheels.lock
dest=.whl

mkdir -p "$dest"
for pin in $(sed -e 's/#.*//' "$lock"); do
  # Wheel names use the normalised project name (lower case, '_' for '-' and '.').
  prefix="$(tr 'A-Z.-' 'a-z__' <<<"${pin%%==*}")-${pin#*==}-"
  if compgen -G "$dest/${prefix}*.whl" >/dev/null; then continue; fi
  echo "downloading $pin" >&2
  "$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 \
    --platform manylinux_2_26_x86_64 \
    -d "$dest" "$pin" 2> >(grep -v "^WARNING: Location" >&2)
done

freeze=""
[ -x .venv/bin/python ] && freeze="$(.venv/bin/python -m pip freeze 2>/dev/null || true)"
tracked=$(git ls-files -z | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
FREEZE="$freeze" TRACKED="$tracked" "$py" - "$lock" "$dest" <<'PY'
"""Check the wheel set against the lock (see the script's header)."""
import os
import re
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

# What the GPU machine has already (its documentation), plus the standard library's backports
# that Python 3.12 does not need.
PRESENT = {"torch", "torchvision", "numpy", "opencv-python-headless", "pillow", "aiohttp", "prometheus-client",
           "onnxruntime", "pyyaml", "typer", "scipy", "scikit-image"}
LIMIT = 64 * 1024 * 1024
ENV = {"python_version": (3, 12), "python_full_version": (3, 12, 1), "sys_platform": "linux",
       "platform_system": "Linux", "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def applies(marker: str) -> bool:
    """Evaluate the simple markers wheels use (and/or of comparisons); extras never apply."""
    if "extra" in marker:
        return False
    def one(m: re.Match) -> str:
        key, op, value = m.groups()
        have = ENV[key]
        want = tuple(int(x) for x in value.split(".")) if isinstance(have, tuple) else value
        if isinstance(have, tuple):
            have = have[:len(want)]
        return str({"<": have < want, "<=": have <= want, "==": have == want, "!=": have != want,
                    ">=": have >= want, ">": have > want}[op])
    expr = re.sub(r"(\w+)\s*(<=|>=|==|!=|<|>)\s*['\"]([^'\"]*)['\"]", one, marker)
    if not re.fullmatch(r"[\s()TrueFalsandor]*", expr):
        raise SystemExit(f"cannot judge the marker {marker!r}")
    return bool(eval(expr))  # only True/False/and/or/parentheses remain


lock, dest = Path(sys.argv[1]), Path(sys.argv[2])
pins = {}
for line in lock.read_text().splitlines():
    line = line.split("#", 1)[0].strip()
    if line:
        name, version = line.split("==")
        pins[norm(name)] = version
problems = []
wheels = {}
for whl in sorted(dest.glob("*.whl")):
    name, version = whl.name.split("-")[:2]
    name = norm(name)
    if name in wheels:
        problems.append(f"two wheels of {name} in {dest}: {wheels[name].name}, {whl.name}")
    wheels[name] = whl
    if pins.get(name) != version:
        problems.append(f"{whl.name} is not pinned in {lock} (remove it, or pin it)")
problems += [f"no wheel for {n}=={v}" for n, v in pins.items() if n not in wheels]
for name, whl in wheels.items():
    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        requires = Parser().parsestr(z.read(meta).decode()).get_all("Requires-Dist") or []
    for req in requires:
        spec, _, marker = req.partition(";")
        if marker.strip() and not applies(marker):
            continue
        need = norm(re.split(r"[\s<>=!~\[(;]", spec.strip(), maxsplit=1)[0])
        if need not in pins and need not in PRESENT:
            problems.append(f"{whl.name} needs {need}: pin it in {lock} (it is not on the GPU machine)")
venv = {}
for line in os.environ.get("FREEZE", "").splitlines():
    if "==" in line:
        n, v = line.split("==", 1)
        venv[norm(n)] = v.strip()
problems += [f"{lock} pins {n}=={v} but .venv has {venv[n]}: update the lock" for n, v in pins.items()
             if n in venv and venv[n] != v]
size = sum(w.stat().st_size for w in wheels.values())
tracked = int(os.environ["TRACKED"])
print(f"{len(wheels)} wheels: {size / 2**20:.1f} MiB; tracked files: {tracked / 2**20:.1f} MiB; "
      f"together {(size + tracked) / 2**20:.1f} MiB of {LIMIT / 2**20:.0f} MiB")
if size + tracked > LIMIT:
    problems.append("over 64 MiB with the tracked files: the working tree cannot travel")
for p in problems:
    print(p, file=sys.stderr)
sys.exit(1 if problems else 0)
PY
