"""Kinds of run over many candidates: search (Optuna), ablation grids, proxy checks; each row a Record."""

from mmlab._lazy import lazy_exports

__all__ = ["EvalPlan", "GridSettings", "SAMPLERS", "SearchConfig", "evaluate", "load_study", "pareto_mask",
           "proxy_check", "run_grid", "run_worker"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "EvalPlan": "mmlab.study.candidate",
    "evaluate": "mmlab.study.candidate",
    "GridSettings": "mmlab.study.grid",
    "run_grid": "mmlab.study.grid",
    "SAMPLERS": "mmlab.study.samplers",
    "SearchConfig": "mmlab.study.search",
    "run_worker": "mmlab.study.search",
    "load_study": "mmlab.study.storage",
    "pareto_mask": "mmlab.study.pareto",
    "proxy_check": "mmlab.study.proxy_check",
})
