"""One-off migration (2026-12-07): the cpu-long paper records into the official test order.

Until 2026-12-07 an ImageFolder's whole test split was used in its stored order, sorted by class
folder (lib.data.test_order_for now puts it in the official order). The paper protocol's records on
all 10,000 test images are unaffected in their numbers, but their per-example outcomes follow the
old order. This script rewrites each such record's packed masks into the new order (a permutation of
the same outcomes: no outcome is recomputed or changed), re-checks the permutation against the run's
weights (clean predictions recomputed in the new order must agree with the permuted clean mask), and
stamps the record with ``test_order`` and a ``reordered`` note. Records on the first n < 10,000 images
cover other images now and are not migrated: they are deleted and evaluated again.

    python outputs/migrations/2026-12-07_test_order.py outputs/runs/*-cpu-long-*/eval/paper-nall.json
"""
import datetime as dt
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from lib import runs  # noqa: E402
from lib.data import load_dataset  # noqa: E402
from lib.io import read_json, write_json  # noqa: E402
from lib.protocols import check_record, labels_digest, pack, unpack  # noqa: E402


def main(paths):
    data = load_dataset("cifar10", sources=("imagefolder",))
    order = data.test_order.numpy()
    old_digest, new_digest = labels_digest(data.y_test), labels_digest(data.y_test[data.test_order])
    whole = data.subset(None, None)
    assert labels_digest(whole.y_test) == new_digest
    for p in map(Path, paths):
        rec = read_json(p)
        n = rec["n"]
        if "test_order" in rec:
            print(f"{p}: already in the new order, left as it is")
            continue
        if n != len(order) or rec["labels_digest"] != old_digest:
            raise SystemExit(f"{p}: not a record of the whole class-sorted test split (n={n}, "
                             f"labels {rec['labels_digest']} vs {old_digest})")

        def move(packed):
            return pack(unpack(packed, n)[order])
        rec["clean"] = move(rec["clean"])
        for t in rec["threats"].values():
            t["robust"] = move(t["robust"])
        for a in rec.get("attacks", {}).values():
            if "robust" in a:
                a["robust"] = move(a["robust"])
        rec["labels_digest"] = new_digest
        rec["test_order"] = whole.test_order_note
        run = runs.load_run(p.parent.parent)
        model = runs.load_model(run, "cpu")
        with torch.no_grad():
            x = whole.x_test.float().div(255)
            pred = torch.cat([model(x[i:i + 500]).argmax(1) for i in range(0, n, 500)])
        now = (pred == whole.y_test).numpy()
        agree = int((now == unpack(rec["clean"], n)).sum())
        rec["reordered"] = {
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "how": "per-example outcomes permuted from the class-sorted stored order into the official order "
                   "(outputs/migrations/2026-12-07_test_order.py); no outcome recomputed",
            "old_labels_digest": old_digest,
            "clean_check": f"clean predictions recomputed in the new order agree with the permuted clean "
                           f"outcomes on {agree:,} of {n:,} images",
        }
        if agree < n - 5:
            raise SystemExit(f"{p}: the permuted clean outcomes disagree with the weights on {n - agree} images")
        check_record(p, rec, run.metrics.get("weights_sha"), run.config)
        write_json(p, rec)
        print(f"{p}: reordered; {rec['reordered']['clean_check']}")


if __name__ == "__main__":
    main(sys.argv[1:])
