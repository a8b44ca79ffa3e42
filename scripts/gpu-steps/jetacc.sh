#!/usr/bin/env bash
# Per-output accuracy of mlp_jet over several random nets: `kiln tune --family mlp_jet --preset
# pinn-jets --force` once per seed of KILN_JETACC_SEEDS (default "1 2 3 4 5 6 7 8"). Each run
# draws new weights and points for the three target nets and validates every legal config
# against the f64 reference at 600 points, recording each output's error (u, grad, second),
# its bound and the net's fp32 floor. The step writes, per seed, net and math (fma, tf32x3,
# split16, wgmma, wgmma_duo), the worst error of each output over that math's configs, and the
# served config's, to $KILN_GPU_REPORT/jet_accuracy.json.
set -uo pipefail
seeds="${KILN_JETACC_SEEDS:-1 2 3 4 5 6 7 8}"
rc=0
for s in $seeds; do
  dir=/tmp/kiln-jetacc-$s
  rm -rf "$dir" && mkdir -p "$dir"
  ./kiln tune --family mlp_jet --preset pinn-jets --force --seed "$s" --budget 4m --tuned-dir "$dir" \
    >/dev/null || rc=1
done
python3 - "$KILN_GPU_REPORT/jet_accuracy.json" $seeds <<'PY'
import glob, json, sys
out, seeds = sys.argv[1], sys.argv[2:]
rows = []
for s in seeds:
    for path in glob.glob(f"/tmp/kiln-jetacc-{s}/*/mlp_jet.json"):
        for e in json.load(open(path))["entries"]:
            p = e["problem"]
            worst = {}
            for c in e.get("candidates", []):
                if c.get("outcome") not in ("ok", "stopped") or not c.get("outputs"):
                    continue
                m = c["config"].get("math", "fma")
                w = worst.setdefault(m, {"configs": 0})
                w["configs"] += 1
                for o in c["outputs"]:
                    w[o["name"]] = max(w.get(o["name"], 0.0), o["max_rel_err"])
            invalid = [c["reason"] for c in e.get("candidates", []) if c.get("outcome") == "invalid"]
            rows.append({
                "seed": int(s), "d": p["d"], "width": p["width"], "points": p["points"],
                "served": {"config": e["config"], "outputs": e.get("outputs", [])},
                "worst_by_math": worst, "invalid": invalid,
            })
json.dump({"rows": rows}, open(out, "w"), indent=1)
for r in rows:
    o = {x["name"]: x for x in r["served"]["outputs"]}
    print(f"seed {r['seed']} d={r['d']}: served {r['served']['config'].get('math')} " + " ".join(
        f"{k} {v['max_rel_err']:.2e}/{v['bound']:.0e} (fp32 {v['fp32_floor']:.1e})" for k, v in o.items()),
        "| worst:", {m: {k: f"{v:.1e}" for k, v in w.items() if k != "configs"} for m, w in r["worst_by_math"].items()},
        f"| invalid {len(r['invalid'])}")
PY
exit $rc
