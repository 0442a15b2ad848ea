#!/usr/bin/env bash
# scripts/leak-scan.sh: looks for the secret values of an environment in
# everything taskctl wrote or that the engine shows.
#
#   scripts/leak-scan.sh -p PROFILE [-p PROFILE…] [-e ENV] [FILE…]
#
# It reads, from Vault, every secret the profile references (`vault:`
# references, pinned or not, and the managed `secrets.entries`), every
# version Vault keeps of each, then scans for any of those values (and their
# URL-encoded and JSON-escaped forms):
#   - the state directory (journal, audit, plans: `state.path`),
#   - `docker inspect` of every container of the environment (agents,
#     services, release records), when the target is docker,
#   - every FILE given (for example the saved output of a deploy:
#     `taskctl deploy … >out.log 2>&1; scripts/leak-scan.sh -p … out.log`).
# Values shorter than 6 characters and the fields that are public by
# design (usernames, host names, public keys, certificates: the same list
# as `PUBLIC_FIELDS` in crates/core/src/secrets.rs) are not looked for.
# Prints what it scanned and where a value was found (never the value).
# Exit 0: nothing found; 1: a leak; 2: usage or a failure to read Vault.
#
# Needs: taskctl on PATH (or TASKCTL=path), VAULT_ADDR and VAULT_TOKEN (or
# ~/.vault-token), curl, python3, and the docker CLI for the docker target.
set -euo pipefail

TASKCTL=${TASKCTL:-taskctl}
args=()
files=()
while [[ $# -gt 0 ]]; do
    case $1 in
    -p | --profile | -e | --env)
        [[ $# -ge 2 ]] || { echo "leak-scan: $1 needs a value" >&2; exit 2; }
        args+=("$1" "$2")
        shift 2
        ;;
    -h | --help)
        sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        files+=("$1")
        shift
        ;;
    esac
done
[[ ${#args[@]} -gt 0 ]] || { echo "leak-scan: name the profile with -p PROFILE" >&2; exit 2; }

token=${VAULT_TOKEN:-}
if [[ -z $token && -f $HOME/.vault-token ]]; then
    token=$(<"$HOME/.vault-token")
fi
profile_json=$("$TASKCTL" "${args[@]}" render profile -o json)

LEAK_SCAN_TOKEN=$token LEAK_SCAN_PROFILE=$profile_json python3 - "${files[@]}" <<'PY'
import json, os, subprocess, sys, urllib.parse, urllib.request

profile = json.loads(os.environ["LEAK_SCAN_PROFILE"])
token = os.environ["LEAK_SCAN_TOKEN"]
secrets = profile.get("secrets") or {}
addr = (secrets.get("vault_address") or os.environ.get("VAULT_ADDR")
        or ((profile.get("services") or {}).get("vault") or {}).get("external", {}).get("url"))
mount_default = secrets.get("mount") or "secret"

def refs(v, out):
    if isinstance(v, str) and v.startswith("vault:") and "#" in v:
        out.add(v[len("vault:"):].split("#")[0].split("?")[0].strip("/"))
    elif isinstance(v, list):
        for x in v: refs(x, out)
    elif isinstance(v, dict):
        for x in v.values(): refs(x, out)

paths = set()
refs(profile, paths)
for e in (secrets.get("entries") or {}).values():
    paths.add(e["path"].strip("/"))

def split(path):
    if path.startswith(mount_default + "/"):
        return mount_default, path[len(mount_default) + 1:]
    return tuple(path.split("/", 1)) if "/" in path else (path, "")

def get(url):
    req = urllib.request.Request(url, headers={"X-Vault-Token": token})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        sys.exit(f"leak-scan: Vault at {addr} answered HTTP {e.code} for {url.split('/v1/')[1]}")
    except OSError as e:
        sys.exit(f"leak-scan: cannot reach Vault at {addr}: {e}")

values = {}
if paths and not addr:
    print("leak-scan: the profile references Vault but no address is known (VAULT_ADDR)", file=sys.stderr)
    sys.exit(2)
PUBLIC = {"username", "hosts", "public_key", "public_keys", "cert", "ca_cert", "ca_certs"}
for path in sorted(paths):
    mount, rest = split(path)
    meta = get(f"{addr}/v1/{mount}/metadata/{rest}")
    if not meta:
        continue
    for version in meta["data"].get("versions", {}):
        data = get(f"{addr}/v1/{mount}/data/{rest}?version={version}")
        if not data or not data.get("data") or not data["data"].get("data"):
            continue
        for key, value in data["data"]["data"].items():
            if key in PUBLIC or not isinstance(value, str) or len(value) < 6:
                continue
            label = f"vault:{path}?version={version}#{key}"
            for form in {value, urllib.parse.quote(value, safe=""), json.dumps(value)[1:-1]}:
                values.setdefault(form.encode(), label)

places = []
state = (profile.get("state") or {}).get("path") or ".taskctl"
for root, _, names in os.walk(state):
    for n in names:
        p = os.path.join(root, n)
        with open(p, "rb") as f:
            places.append((p, f.read()))
for p in sys.argv[1:]:
    with open(p, "rb") as f:
        places.append((p, f.read()))
target = profile.get("target") or {}
if target.get("kind") == "docker":
    meta = profile["metadata"]
    label = f"taskctl.dev/environment={meta['name']}.{meta['environment']}"
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={label}"],
                         capture_output=True, text=True, check=True).stdout.split()
    for i in ids:
        out = subprocess.run(["docker", "inspect", i], capture_output=True, check=True).stdout
        places.append((f"docker inspect {i}", out))

leaks = 0
for where, data in places:
    found = sorted({label for form, label in values.items() if form in data})
    for label in found:
        print(f"LEAK  {where}: holds the value of {label}")
        leaks += 1
scanned = sum(len(d) for _, d in places)
print(f"leak-scan: {len(values)} forms of secret values from {', '.join(sorted(paths)) or 'no Vault path'}; "
      f"{len(places)} places, {scanned} bytes scanned; {leaks} leak(s)")
sys.exit(1 if leaks else 0)
PY
