"""The demo's swap under the old rule, in importance: `PYTHONPATH=. python benchmarks/results/swap_rule/taylor_net.py`
(prune's own Taylor scores on the shipped ResNet-20, global, 50% MACs; the old rule = no `values`)."""
import sys

import numpy as np

import onnxprune.api as api
from onnxprune.criteria.normalize import cross_group_importance
from onnxprune.search import AllocationConfig

cap = {}
orig = api.allocate


def wrap(analysis, scores, cfg):  # type: ignore[no-untyped-def]
    cap.update(analysis=analysis, scores=scores)
    return orig(analysis, scores, cfg)


api.allocate = wrap
res = api.prune("benchmarks/models/resnet20_folded.onnx",
                api.PruneConfig(method="taylor", global_ranking=True, target_flops=0.5, data="fashion-mnist"))
a, sc = cap["analysis"], cap["scores"]
v = cross_group_importance(a, sc)
mod = sys.modules["onnxprune.search.allocate"]
acfg = AllocationConfig(target_flops=0.5, global_ranking=True)
k_new = orig(a, sc, acfg)
mod.cross_group_importance = lambda *args, **kw: None  # the old rule: the swap using the most budget
k_old = orig(a, sc, acfg)
print("new rule equals prune's mask:", bool((k_new == np.asarray(res.keep)).all()))
for name, k in (("new", k_new), ("old", k_old)):
    print(name, "MACs", round(a.cost.macs(k) / a.macs, 4), "widths", [int(k[g.unit_slice].sum()) for g in a.prunable()])
print("old rule's swap against the new result: gained", round(float(v[k_old & ~k_new].sum()), 3), "lost",
      round(float(v[k_new & ~k_old].sum()), 3), "(per-group normalized Taylor; units", int((k_old & ~k_new).sum()),
      "added,", int((k_new & ~k_old).sum()), "removed)")
