#!/usr/bin/env python3
"""Expected optimizer answers, computed straight from SkyPilot-format catalog CSVs.

This is deliberately a separate, simple implementation (Python's csv module, no skyform code)
so that tests/optimizer_agreement.rs compares the optimizer against answers derived
independently. Usage:

    scripts/catalog-expect.py CATALOG_DIR < requests.txt > testdata/optimizer/agreement.csv

Each request line (accelerators may be `A,B` for a set or `A>B` for a list): `name|cloud|accelerators|cpus|memory|spot|max_hourly_cost|nodes`
(empty fields mean "not given"; accelerators is NAME:COUNT). Output rows:
`name,infra,instance_type,hourly_cents,RUNNERS-UP` (the next two as "infra type cents" joined by `;`, or `*` for sets and lists), or `name,NO MATCH,,`.
"""
import csv
import sys

AWS_FAMILIES = ("m6i.", "m6id.", "r6i.", "r6id.", "c6i.", "c6id.", "m7i.", "m7id.", "r7i.", "r7id.", "c7i.", "c7id.")
GCP_FAMILIES = ("n2-standard-", "n2-highmem-", "n2-highcpu-", "n4-standard-", "n4-highmem-", "n4-highcpu-")
GPU_HOST_FAMILIES = ("a2-", "a3-", "a4-", "g2-")
FIXED = {
    ("A100", 1): ["a2-highgpu-1g"], ("A100", 2): ["a2-highgpu-2g"], ("A100", 4): ["a2-highgpu-4g"],
    ("A100", 8): ["a2-highgpu-8g"], ("A100", 16): ["a2-megagpu-16g"],
    ("A100-80GB", 1): ["a2-ultragpu-1g"], ("A100-80GB", 2): ["a2-ultragpu-2g"],
    ("A100-80GB", 4): ["a2-ultragpu-4g"], ("A100-80GB", 8): ["a2-ultragpu-8g"],
    ("H100", 1): ["a3-highgpu-1g"], ("H100", 2): ["a3-highgpu-2g"], ("H100", 4): ["a3-highgpu-4g"],
    ("H100", 8): ["a3-highgpu-8g"], ("H100-MEGA", 8): ["a3-megagpu-8g"], ("H200", 8): ["a3-ultragpu-8g"],
    ("B200", 8): ["a4-highgpu-8g"],
    ("L4", 1): ["g2-standard-4", "g2-standard-8", "g2-standard-12", "g2-standard-16", "g2-standard-32"],
    ("L4", 2): ["g2-standard-24"], ("L4", 4): ["g2-standard-48"], ("L4", 8): ["g2-standard-96"],
}


def num(s):
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def rows(path):
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            yield r


def offers(catalog_dir, cloud):
    """(infra, instance, acc_name, acc_count, vcpus, mem, spot, price) tuples."""
    out = []
    vms, gpus = [], []
    for r in rows(f"{catalog_dir}/{cloud}/vms.csv"):
        it = (r.get("InstanceType") or "").strip()
        acc = (r.get("AcceleratorName") or "").strip()
        cnt = num(r.get("AcceleratorCount")) or (1.0 if acc else 0.0)
        rec = dict(it=it, acc=acc, cnt=cnt, cpus=num(r.get("vCPUs")) or 0.0, mem=num(r.get("MemoryGiB")) or 0.0,
                   price=num(r.get("Price")), spot=num(r.get("SpotPrice")), region=r["Region"].strip(),
                   zone=(r.get("AvailabilityZone") or "").strip())
        (gpus if not it else vms).append(rec)
    has_gpus = bool(gpus)
    od = {}
    for v in vms:
        if has_gpus and not v["acc"] and v["it"].startswith(GPU_HOST_FAMILIES):
            continue
        if v["price"] is not None:
            key = (v["region"], v["it"])
            if key not in od or v["price"] < od[key]["price"]:
                od[key] = v
        if v["spot"] is not None:
            out.append((f"{cloud}/{v['region']}/{v['zone']}", v["it"], v["acc"], v["cnt"], v["cpus"], v["mem"], True, v["spot"]))
    for (region, it), v in od.items():
        out.append((f"{cloud}/{region}", it, v["acc"], v["cnt"], v["cpus"], v["mem"], False, v["price"]))
    # GCP: a GPU row plus its host, in the same zone.
    by_zone = {}
    for v in vms:
        if not v["acc"] and v["zone"]:
            by_zone.setdefault(v["zone"], []).append(v)
    best_od = {}
    for g in gpus:
        if g["acc"].startswith("tpu-") or not g["zone"]:
            continue
        hosts = by_zone.get(g["zone"], [])
        names = FIXED.get((g["acc"], int(g["cnt"])))
        if names is None and g["acc"] in {n for n, _ in FIXED}:
            continue
        if names is not None:
            cand = [h for h in hosts if h["it"] in names]
        else:
            need = (8.0 if g["acc"] in ("V100", "P100") else 4.0) * g["cnt"]
            n1 = [h for h in hosts if h["it"].startswith("n1-") and h["cpus"] >= need and h["mem"] >= 4 * h["cpus"]]
            n1.sort(key=lambda h: (h["price"] if h["price"] is not None else 1e18, h["it"]))
            cand = n1[:1]
        for h in cand:
            if h["spot"] is not None and g["spot"] is not None:
                out.append((f"{cloud}/{g['region']}/{g['zone']}", h["it"], g["acc"], g["cnt"], h["cpus"], h["mem"], True, h["spot"] + g["spot"]))
            if h["price"] is not None and g["price"] is not None:
                key = (g["region"], h["it"], g["acc"], g["cnt"])
                p = h["price"] + g["price"]
                if key not in best_od or p < best_od[key][7]:
                    best_od[key] = (f"{cloud}/{g['region']}", h["it"], g["acc"], g["cnt"], h["cpus"], h["mem"], False, p)
    out.extend(best_od.values())
    return out


def cpus_ok(spec, have):
    if not spec:
        return True
    if spec.endswith("+"):
        return have >= float(spec[:-1])
    return abs(have - float(spec)) < 1e-9


def mem_ok(spec, have, cpus):
    if not spec:
        return True
    if spec.endswith("x"):
        return have >= float(spec[:-1]) * cpus
    if spec.endswith("+"):
        return have >= float(spec[:-1])
    return abs(have - float(spec)) < 1e-6


def answer(catalog_dir, line):
    """Accelerators: one NAME:COUNT, several joined by ',' (cheapest of), or by '>' (in order:
    the first that has any match wins)."""
    name, cloud, acc, cpus, mem, spot, cap, nodes = (line.split("|") + [""] * 8)[:8]
    if ">" in acc:
        for choice in acc.split(">"):
            got = answer(catalog_dir, "|".join([name, cloud, choice, cpus, mem, spot, cap, nodes]))
            if "NO MATCH" not in got:
                return ",".join(got.split(",")[:4]) + ",*"
        return f"{name},NO MATCH,,"
    if "," in acc:
        rows = [answer(catalog_dir, "|".join([name, cloud, c, cpus, mem, spot, cap, nodes])) for c in acc.split(",")]
        matched = [r.split(",") for r in rows if "NO MATCH" not in r]
        if not matched:
            return f"{name},NO MATCH,,"
        best = min(matched, key=lambda r: (int(r[3]), r[1], r[2]))
        return ",".join(best[:4]) + ",*"
    nodes = int(nodes or 1)
    want_spot = spot == "spot"
    clouds = [cloud] if cloud else ["aws", "gcp", "lambda"]
    found = set()
    for c in clouds:
        for (infra, it, a, n, vc, m, sp, price) in offers(catalog_dir, c):
            if sp != want_spot:
                continue
            if acc:
                an, _, ac = acc.partition(":")
                if a.lower() != an.lower() or abs(n - float(ac or 1)) > 1e-9:
                    continue
            else:
                fam = AWS_FAMILIES if c == "aws" else GCP_FAMILIES if c == "gcp" else None
                if a or (fam and not it.startswith(fam)):
                    continue
                if not cpus and not mem and vc < 8:
                    continue
                if not mem and m + 1e-9 < 4 * vc:
                    continue
            if not cpus_ok(cpus, vc) or not mem_ok(mem, m, vc):
                continue
            total = round(price * 1_000_000) * nodes
            if cap and total > round(float(cap) * 1_000_000):
                continue
            found.add((total, infra, it))
    if not found:
        return f"{name},NO MATCH,,"
    ranked = sorted(found)
    best = ranked[0]
    cents = (best[0] + 5000) // 10000
    # The runners-up too, so the order of the failover list is checked, not only the winner.
    rest = ";".join(f"{i} {t} {(p + 5000) // 10000}" for (p, i, t) in ranked[1:3])
    return f"{name},{best[1]},{best[2]},{cents},{rest}"


def main():
    catalog_dir = sys.argv[1]
    for line in sys.stdin:
        line = line.strip()
        if line and not line.startswith("#"):
            print(answer(catalog_dir, line))


if __name__ == "__main__":
    main()
