#!/usr/bin/env python3
"""What SkyPilot's own optimizer picks for each SkyPilot YAML file, for `tests/convert.rs`.

Writes testdata/convert/skypilot-answers.tsv: for each corpus file, the cloud, region,
instance type and hourly price (per node, host + accelerators) that SkyPilot 0.14.1 chooses
over the shared catalogs, with aws, gcp and lambda enabled, or why it chooses nothing.
The test converts the same file with `skyform convert` and checks that `skyform plan` on
the result, with the same clouds declared, chooses the same instance type and price.

Run (SkyPilot from PyPI, offline; its optimizer only reads the catalog CSVs; the aws and gcp
extras are what its image checks import):

    python3 -m venv /tmp/venv-sky && /tmp/venv-sky/bin/pip install "skypilot[aws,gcp]==0.14.1"
    /tmp/venv-sky/bin/python scripts/skypilot-answers.py \
        ../shared/corpus/skypilot-yaml ../shared/catalogs/skypilot \
        testdata/convert/skypilot-answers.tsv

It runs SkyPilot with a HOME of its own (a temporary directory), so it neither reads nor
changes the caller's ~/.sky.
"""

import os
import re
import shutil
import sys
import tempfile

CLOUDS = ["aws", "gcp", "lambda"]


def seed_home(catalogs):
    """A HOME whose SkyPilot catalog cache holds the shared CSVs."""
    home = tempfile.mkdtemp(prefix="sky-answers-")
    dest = os.path.join(home, ".sky", "catalogs", "v8")
    for cloud in CLOUDS + ["common"]:
        src = os.path.join(catalogs, cloud)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(dest, cloud))
    os.environ["HOME"] = home
    # Never reach for the network or an API server.
    os.environ["SKYPILOT_DISABLE_USAGE_COLLECTION"] = "1"
    return home


def answer(path):
    import yaml  # SkyPilot's own dependency: PyYAML, as `sky launch` reads the file
    import sky
    from sky import optimizer as opt

    try:
        with open(path, encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
    except yaml.YAMLError as e:
        return "BAD", f"SkyPilot cannot read it: {str(e).splitlines()[0]}"
    if len(docs) != 1:
        return "SKIP", "a pipeline or job group (several documents)"
    config = docs[0]
    for section in ("envs", "secrets"):
        # Null values must come from --env/--secret; any value does for placement.
        if isinstance(config.get(section), dict):
            config[section] = {k: ("x" if v is None else v) for k, v in config[section].items()}
    try:
        task = sky.Task.from_yaml_config(config)
        with sky.Dag() as dag:
            dag.add(task)
        opt.Optimizer.optimize(dag, quiet=True)
    except Exception as e:  # noqa: BLE001 — the reason is the answer
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        first = re.sub(r"\x1b\[[0-9;]*m", "", first)  # no terminal colours in the table
        return "NONE", f"{type(e).__name__}: {first}"[:200]
    best = task.best_resources
    if best is None:
        return "NONE", "no resources chosen"
    cloud = str(best.cloud).lower()
    price = best.get_cost(3600)
    return "OK", f"{cloud}\t{best.region}\t{best.instance_type}\t{price:.5f}\t{task.num_nodes}"


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    corpus, catalogs, out = sys.argv[1:]
    corpus, catalogs, out = (os.path.abspath(p) for p in (corpus, catalogs, out))
    seed_home(catalogs)
    import sky
    from sky import global_user_state
    from sky.clouds import CloudCapability
    from sky.skylet import constants

    from sky import check
    from sky.utils import registry

    ws = constants.SKYPILOT_DEFAULT_WORKSPACE
    # The allowed list must be what SkyPilot's config gives, or it re-checks (needs credentials).
    global_user_state.set_allowed_clouds(check._get_workspace_allowed_clouds(ws), ws)  # noqa: SLF001
    enabled = [repr(registry.CLOUD_REGISTRY.from_str(c)) for c in CLOUDS]
    global_user_state.set_enabled_clouds(enabled, CloudCapability.COMPUTE, ws)
    rows = []
    for name in sorted(os.listdir(corpus)):
        if not name.endswith(".yaml"):
            continue
        status, detail = answer(os.path.join(corpus, name))
        rows.append(f"{name}\t{status}\t{detail}")
        print(rows[-1], flush=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write(f"# SkyPilot {sky.__version__}'s optimizer over ../shared/catalogs/skypilot with {', '.join(CLOUDS)} enabled;\n")
        f.write("# written by scripts/skypilot-answers.py. OK rows: cloud, region, instance type, $/h per node, nodes.\n")
        f.write("# file\tstatus\tanswer or reason\n")
        for r in rows:
            f.write(r + "\n")


if __name__ == "__main__":
    main()
