"""The method registry is the one list of methods: every entry loads, and the API, the CLI and
the benchmark list derive from it."""

from __future__ import annotations

import argparse

import pytest

from benchmarks import run as bench_run
from onnxprune import methods
from onnxprune.api import PruneConfig, prune
from onnxprune.cli import build_parser
from onnxprune.errors import InputError
from onnxprune.search import search_fn
from tests import graphs


@pytest.mark.parametrize("name", list(methods.METHODS))
def test_every_method_loads(name: str) -> None:
    m = methods.METHODS[name]
    assert m.name == name and m.kind in ("criterion", "search") and m.summary
    assert callable(m.load())
    if m.searches:
        assert search_fn(name) is m.load()
        assert m.needs_data  # search methods score candidates on data


def _method_action(parser: argparse.ArgumentParser, command: str) -> argparse.Action:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return next(a for a in sub.choices[command]._actions if a.dest == "method")


def test_cli_and_benchmarks_derive_from_the_registry() -> None:
    parser = build_parser()
    assert tuple(_method_action(parser, "prune").choices) == tuple(methods.METHODS)
    assert tuple(_method_action(parser, "demo").choices) == methods.names_of("criterion")
    assert set(methods.names_of("search")) <= set(bench_run.SEARCHES)
    for name, _ in bench_run.SCORE_METHODS.values():
        assert methods.METHODS[name].kind == "criterion"


def test_unknown_method_is_one_line_input_error() -> None:
    with pytest.raises(InputError, match=r"unknown method 'nope' \(choose from l1, "):
        prune(graphs.conv_bn_relu_conv(), PruneConfig(method="nope", sparsity=0.5))
    with pytest.raises(InputError, match="unknown search method 'l1'"):
        methods.method("l1", "search")


@pytest.mark.parametrize("name", methods.names_of(needs_data=True))
def test_data_methods_need_data(name: str) -> None:
    with pytest.raises(InputError, match=f"method='{name}' needs data"):  # the API names its parameters
        prune(graphs.conv_bn_relu_conv(), PruneConfig(method=name, target_flops=0.5))
