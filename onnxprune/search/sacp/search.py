"""The sacp search loop: train, rank candidates by similarity, evaluate the top m cheaply and the top k fully."""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch

from onnxprune.methods import L1
from onnxprune.search.base import SearchContext, SearchResult, progress_bar
from onnxprune.search.budget import Budget, BudgetMeter, make_feasible, mask_key
from onnxprune.search.finalists import brief_finetune, materialize, original_copy, recalibrated_model
from onnxprune.search.sacp.config import METHOD, SacpConfig, sacp_options
from onnxprune.search.sacp.encoder import GCNEncoder, similarity
from onnxprune.search.sacp.graph import ConfigGraph, build_graph
from onnxprune.search.sacp.light import LightFinetune
from onnxprune.search.sacp.pairs import train_ranked
from onnxprune.search.sacp.stats import kendall, spearman
from onnxprune.search.sacp.tables import UnitTables, sample_rates, scale_into_budget
from onnxprune.search.sacp.train import train_encoder


def _candidate_masks(ctx: SearchContext, tables: UnitTables, cfg: SacpConfig,
                     count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Up to `count` (default `cfg.candidates`) distinct feasible L1 masks (uniform rates first)
    and their budget ratios.

    A latency budget is too slow to measure per bisection step: candidates are then scaled into
    the same fraction of MACs, and the evaluated ones are made feasible afterwards.
    """
    meter = ctx.meter
    if ctx.cfg.budget.kind == "latency":
        meter = BudgetMeter(ctx.analysis, Budget("macs", ctx.cfg.budget.target))
    shapes = sample_rates(ctx.rng, count or cfg.candidates, tables.units.size, cfg.min_rate)
    shapes[0] = 1.0  # uniform rates: the L1 baseline is always a candidate
    keeps, ratios, seen = [], [], set()
    for shape in shapes:
        got = scale_into_budget(meter, tables, ctx.analysis, shape)
        if got is None:
            continue
        key = mask_key(got[0])
        if key in seen:
            continue
        seen.add(key)
        keeps.append(got[0])
        ratios.append(got[1])
    if not keeps:  # out of reach for every shape: finish() raises the budget error
        keep = make_feasible(ctx.meter, ctx.analysis.full_keep(), tables.scores)
        return keep[None], np.array([ctx.meter.ratio(keep)])
    return np.stack(keeps), np.array(ratios)


def _train_on_proxy(ctx: SearchContext, graph: ConfigGraph, tables: UnitTables, full: np.ndarray, cfg: SacpConfig,
                    on_epoch: Callable[[int, float], None]) -> tuple[GCNEncoder, list[float]]:
    """The encoder trained on proxy-ranked feasible masks (`pairs.py`), a draw of their own."""
    keeps, _ = _candidate_masks(ctx, tables, cfg, count=cfg.proxy_configs)
    ctx.say(f"{METHOD}: scoring {len(keeps)} feasible masks on {cfg.proxy_images} images (the proxy)")
    proxy = np.asarray(ctx.evaluator.evaluate(list(keeps), images=cfg.proxy_images))
    ctx.trajectory.add(stage="proxy", masks=int(len(keeps)), images=cfg.proxy_images, proxy_mean=float(proxy.mean()),
                       proxy_std=float(proxy.std()), proxy_max=float(proxy.max()), proxy_min=float(proxy.min()))
    torch.manual_seed(ctx.cfg.seed)
    encoder = GCNEncoder(len(graph.nodes), graph.feature_len, cfg.hidden, cfg.layers, cfg.proj, cfg.node_weights)
    encoder.to(ctx.device)  # initialised on the CPU: a seed gives the same weights on any device
    ctx.say(f"{METHOD}: training the GCN encoder on them ({len(graph.nodes)} nodes)")
    losses = train_ranked(encoder, graph.features, graph.a_hat, keeps, proxy, full, epochs=cfg.epochs, lr=cfg.lr,
                          batch_size=cfg.batch_size, temperature=cfg.temperature, margin=cfg.margin, rng=ctx.rng,
                          on_epoch=on_epoch)
    return encoder, losses


def run(ctx: SearchContext) -> SearchResult:
    """Train the encoder, rank L1 candidates by similarity to the unpruned model, evaluate the
    top m cheaply and the top k fully; return the best (fine-tuned model when `k_finetune_epochs`)."""
    cfg = sacp_options(dict(ctx.cfg.options))
    analysis, l1 = ctx.analysis, ctx.scores[L1.name]
    graph = build_graph(analysis, cfg.feature_len).to(ctx.device)  # the encoder runs on `--device`
    tables = UnitTables.build(analysis, l1, cfg.min_rate)
    full = analysis.full_keep()
    state = ctx.checkpoint.load() or {}
    if state:
        ctx.rng.bit_generator.state = state["rng"]
        ctx.trajectory.records = list(state["records"])

    def save(**extra: Any) -> None:
        state.update(extra, rng=ctx.rng.bit_generator.state, records=list(ctx.trajectory.records))
        ctx.checkpoint.save(state)

    total = cfg.epochs + 1 + cfg.top_m + cfg.probe + cfg.top_k
    fields = {"stage": "", "loss": "loss", "best": "best top-1"}
    with progress_bar(METHOD, total, ctx.cfg.progress, fields=fields) as update:
        # 1. contrastive training
        encoder = GCNEncoder(len(graph.nodes), graph.feature_len, cfg.hidden, cfg.layers, cfg.proj,
                             cfg.node_weights).to(ctx.device)
        if "encoder" in state:
            encoder.load_state_dict(state["encoder"])
            encoder.eval()
            losses = list(state["losses"])
            update(cfg.epochs, stage="train", loss=losses[-1])
        else:
            def on_epoch(epoch: int, loss: float) -> None:
                ctx.trajectory.add(stage="train", epoch=epoch, loss=loss)
                update(1, stage="train", loss=loss)

            if cfg.pairs == "proxy":
                encoder, losses = _train_on_proxy(ctx, graph, tables, full, cfg, on_epoch)
            else:
                ctx.say(f"{METHOD}: training the GCN encoder on {cfg.configs} configurations ({len(graph.nodes)} nodes)")
                encoder, losses = train_encoder(graph, tables, full, cfg, ctx.rng, ctx.cfg.seed, on_epoch, ctx.device)
            save(encoder={k: v.clone() for k, v in encoder.state_dict().items()}, losses=losses)

        # 2. candidates ranked by similarity to the unpruned model
        if "ranked" not in state:
            keeps, ratios = _candidate_masks(ctx, tables, cfg)
            sims = similarity(encoder, graph, keeps, full)
            order = np.argsort(-sims, kind="stable")
            top = order[:cfg.top_m]
            rest = order[cfg.top_m:]
            probes = np.sort(ctx.rng.choice(rest, size=min(cfg.probe, rest.size), replace=False)) if rest.size else rest
            picked = np.concatenate([top, probes]).astype(np.int64)
            place = np.empty_like(order)
            place[order] = np.arange(order.size)
            ranked = [{"rank": int(place[i]), "similarity": float(sims[i]),
                       "budget_ratio": float(ratios[i]), "probe": bool(j >= top.size), "uniform": i == 0,
                       "keep": np.packbits(keeps[i])} for j, i in enumerate(picked.tolist())]
            ctx.trajectory.add(stage="rank", candidates=int(len(keeps)), similarity_max=float(sims.max()),
                               similarity_mean=float(sims.mean()), similarity_std=float(sims.std()),
                               uniform_rank=int(place[0]), uniform_similarity=float(sims[0]))
            save(ranked=ranked, candidates=int(len(keeps)), light={}, full={})
        ranked = state["ranked"]
        update(1, stage="rank")
        units = full.size

        def mask(i: int) -> np.ndarray:
            keep = np.unpackbits(ranked[i]["keep"], count=units).astype(bool)
            if not ctx.meter.feasible(keep):  # latency budgets: scaled on MACs, fixed here
                keep = make_feasible(ctx.meter, keep, l1)
            return keep

        # 3. the top m (and the probes) on the cheap validation subset
        #    (light fine-tune first when `light_images`; the masked score is kept beside it)
        light: dict[int, float] = state["light"]
        masked: dict[int, float] = state.setdefault("masked", {})
        tuner = LightFinetune(ctx, cfg) if cfg.light_images > 0 else None
        update(len(light), stage="light")
        todo = [i for i in range(len(ranked)) if i not in light]
        best = max(light.values(), default=float("nan"))
        for start in range(0, len(todo), cfg.eval_batch):
            batch = todo[start:start + cfg.eval_batch]
            masks = [mask(i) for i in batch]
            accs = ctx.evaluator.evaluate(masks)
            tuned = [tuner(keep) for keep in masks] if tuner is not None else accs
            for i, keep, acc, score in zip(batch, masks, accs, tuned):
                light[i], masked[i] = score, acc
                c = ranked[i]
                ctx.trajectory.add(stage="probe" if c["probe"] else "light", rank=c["rank"],
                                   similarity=c["similarity"], reward=c["similarity"], val_top1=score,
                                   masked_val_top1=acc, light_finetuned=tuner is not None,
                                   feasible=ctx.meter.feasible(keep), budget_ratio=ctx.meter.ratio(keep))
            best = max(light.values())
            update(len(batch), stage="light", best=best)
            save(light=light, masked=masked, light_evaluations=state.get("light_evaluations", 0) + (
                len(batch) if tuner is not None else 0))

        top_ids = [i for i in range(len(ranked)) if not ranked[i]["probe"]]
        sims_m = [ranked[i]["similarity"] for i in top_ids]
        accs_m = [light[i] for i in top_ids]
        corr = {"spearman": spearman(sims_m, accs_m), "kendall": kendall(sims_m, accs_m)}
        all_ids = list(range(len(ranked)))
        sims_all = [ranked[i]["similarity"] for i in all_ids]
        if cfg.probe:
            corr["spearman_probe"] = spearman(sims_all, [light[i] for i in all_ids])
            corr["kendall_probe"] = kendall(sims_all, [light[i] for i in all_ids])
        if tuner is not None:
            # similarity against the masked score too, and how well the masked score predicts the tuned one
            corr["masked_spearman_probe"] = spearman(sims_all, [masked[i] for i in all_ids])
            corr["masked_vs_light_spearman"] = spearman([masked[i] for i in all_ids], [light[i] for i in all_ids])
        if "correlation" not in state:
            ctx.trajectory.add(stage="correlation", evaluated=len(top_ids), **corr)
            save(correlation=corr)

        # 4. the top k (by cheap accuracy) on the whole validation split, optionally fine-tuned
        finals: dict[int, dict[str, Any]] = state["full"]
        chosen = sorted(top_ids, key=lambda i: (-light[i], ranked[i]["rank"]))[:cfg.top_k]
        update(sum(1 for i in chosen if i in finals), stage="full")
        teacher: Any = None  # the original, made on first use (ctx.copy is masked by the evaluator)
        for i in chosen:
            if i in finals:
                continue
            keep = mask(i)
            acc = ctx.evaluator.evaluate([keep], images=0)[0]
            entry: dict[str, Any] = {"val_top1": acc, "model": None}
            if cfg.k_finetune_epochs > 0:
                teacher = teacher or original_copy(ctx)
                tuned = brief_finetune(ctx, keep, cfg.k_finetune_images or None, teacher,
                                       epochs=cfg.k_finetune_epochs, recalibrate=cfg.recalibrate_output)
                entry = {"val_top1": tuned.best_val_top1, "masked_val_top1": acc,
                         "model": tuned.model.SerializeToString()}
            finals[i] = entry
            c = ranked[i]
            ctx.trajectory.add(stage="full", rank=c["rank"], similarity=c["similarity"], reward=c["similarity"],
                               val_top1=entry["val_top1"], masked_val_top1=acc, subset_val_top1=light[i],
                               finetuned=entry["model"] is not None, feasible=ctx.meter.feasible(keep),
                               budget_ratio=ctx.meter.ratio(keep))
            update(1, stage="full", best=max(e["val_top1"] for e in finals.values()))
            save(full=finals)

    win = max(chosen, key=lambda i: (finals[i]["val_top1"], -ranked[i]["rank"]))
    pruned_weights, val_top1, keep = None, finals[win]["val_top1"], mask(win)
    if finals[win]["model"] is not None:
        import onnx
        from onnx import numpy_helper

        tuned_model = onnx.load_from_string(finals[win]["model"])
        names = {t.name for t in materialize(ctx, keep).graph.initializer}
        pruned_weights = {t.name: numpy_helper.to_array(t) for t in tuned_model.graph.initializer if t.name in names}
    elif cfg.recalibrate_output:  # the API re-estimates BatchNorm the same way; score what it will write
        _, val_top1 = recalibrated_model(ctx, keep)
    return ctx.finish(keep, val_top1=val_top1, pruned_weights=pruned_weights, masked_val_top1=finals[win].get(
                          "masked_val_top1", finals[win]["val_top1"]),
                      winner_rank=ranked[win]["rank"], winner_similarity=ranked[win]["similarity"], pairs=cfg.pairs,
                      picked="uniform_l1" if ranked[win].get("uniform") else "ranked_l1",
                      candidates=state["candidates"], final_loss=losses[-1], first_loss=losses[0],
                      light_finetuned=cfg.light_images > 0, light_evaluations=state.get("light_evaluations", 0),
                      total_evaluations=ctx.evaluator.evaluations + state.get("light_evaluations", 0),
                      **{k: (None if math.isnan(v) else v) for k, v in corr.items()})
