"""sacp: structure-aware channel pruning by searching with contrastive graph embeddings
(Liu et al., arXiv 2506.11469).

1. The model becomes a layer graph: one node per layer (Conv, Gemm, BatchNormalization, pooling,
   Add, Concat...; element-wise activations are bridged), edges follow the data flow. A node's
   features are the binary keep vector of its output channels (adaptive-average-pooled or
   zero-padded to `feature_len`), its kept fraction, log-width and an op-type one-hot.
2. Training pairs (`pairs`). `proxy` (default): `proxy_configs` budget-feasible L1 masks, drawn
   like the search candidates, scored by a cheap proxy (masked top-1 on `proxy_images` validation
   images); in each mini-batch every mask is a positive against the masks that scored lower by
   at least `margin` (`pairs.ranked_info_nce`). `l1_random` (the paper's): N random
   configurations (per-group keep rates) each give a positive, L1-norm pruning at those rates,
   and `negatives` random masks at the same rates; each positive competes with the negatives of
   the whole mini-batch (`batch_negatives`; false: its own configuration's only). Why the
   default differs from the paper: every search candidate is a feasible L1 mask, so an encoder
   that tells L1 from random masks has nothing to rank them by (measured: docs/sacp.md).
   A GCN encoder (A_hat = D^-1/2 (A+I) D^-1/2, `layers` layers, mean readout, projection head)
   is trained with InfoNCE. The anchor is the unpruned model's embedding, as in the paper's
   search step, which ranks candidates by cosine similarity to the original model: training and
   search then use the same quantity, cos(z(config), z(unpruned)).
   The first layer has node-specific weights (`node_weights`, one `feature_len x hidden` matrix
   per node): channel i of one layer has nothing to do with channel i of another, and with
   weights shared across nodes the binary vectors of L1 and random masks at equal rates are
   indistinguishable. The GCN layers, readout and head are shared as in the paper.
3. Search: M rate combinations, each scaled by bisection into the budget, made into L1 masks,
   embedded in batches and ranked by similarity. The top m (and `probe` candidates from the rest
   of the ranking) get the paper's light fine-tune (`light_images` > 0: one short distillation
   epoch with the mask enforced, `light.py`) and are scored on the cheap validation subset; the
   best k by that score are evaluated on the whole validation split (masked, BatchNorm
   re-estimated), optionally after a short distillation fine-tune of the pruned ONNX
   (`k_finetune_epochs`). The best on validation wins.
4. The paper's central claim, that similarity ranks configurations by quality, is measured rather
   than assumed: Spearman and Kendall correlations between similarity and the measured accuracy of
   the evaluated candidates (the top m, and the top m plus `probe` candidates drawn from the
   rest of the ranking) go to the trajectory and the summary, with the light-fine-tuned and the
   masked scores.

Modules: `config` (options), `graph` (layer graph, features), `encoder` (GCN, embeddings),
`train` (the paper's InfoNCE training), `pairs` (proxy-ranked pairs), `light` (light fine-tune), `tables` (configurations to masks), `stats` (rank correlation),
`search` (the loop, `run`).
"""

from onnxprune.search.sacp.config import PRESETS, SacpConfig, sacp_options
from onnxprune.search.sacp.encoder import GCNEncoder, embed, similarity
from onnxprune.search.sacp.graph import STATIC_FEATURES, ConfigGraph, build_graph
from onnxprune.search.sacp.light import LightFinetune
from onnxprune.search.sacp.pairs import batch_info_nce, ranked_info_nce, train_ranked
from onnxprune.search.sacp.search import recalibrated_model, run
from onnxprune.search.sacp.stats import auc, kendall, spearman
from onnxprune.search.sacp.tables import UnitTables, sample_rates, scale_into_budget
from onnxprune.search.sacp.train import info_nce, train_encoder

__all__ = [
    "PRESETS", "STATIC_FEATURES", "ConfigGraph", "GCNEncoder", "LightFinetune", "SacpConfig", "UnitTables", "auc", "build_graph", "embed",
    "batch_info_nce", "info_nce", "kendall", "ranked_info_nce", "recalibrated_model", "run", "sacp_options", "sample_rates", "scale_into_budget", "similarity",
    "spearman", "train_encoder", "train_ranked",
]
