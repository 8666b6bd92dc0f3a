"""``companion.viz.show_source``: a package object's code, displayable in any notebook."""

from __future__ import annotations

import inspect

import pytest
import torch

from companion.meta.protonet import prototypes
from companion.viz import show_source


def test_show_source_is_the_function_as_defined() -> None:
    source = show_source(prototypes)
    lines, first = inspect.getsourcelines(prototypes)
    assert source.code == "".join(lines)
    assert source.where == f"companion/meta/protonet.py, lines {first}-{first + len(lines) - 1}"
    assert repr(source).splitlines()[1] == lines[0].rstrip("\n")


def test_show_source_html_is_highlighted_and_escaped() -> None:
    html = show_source(prototypes)._repr_html_()
    assert "companion/meta/protonet.py" in html and "<pre" in html
    assert "style=" in html  # inline colours: renders without the book's stylesheet
    assert "&gt;" in html and "->" not in html  # the code is escaped


def test_show_source_refuses_what_has_no_source() -> None:
    with pytest.raises(TypeError, match="cannot show the source of"):
        show_source(len)


def test_intuition_figures_draw() -> None:
    import matplotlib.pyplot as plt

    from companion.data import EpisodeSampler, load_dataset
    from companion.toys import QuadraticTasks, contrastive_toy
    from companion.viz import (
        annotated_episode_figure,
        contrastive_geometry_figure,
        embedding_map_figure,
        maml_landscape_figure,
    )

    episode = EpisodeSampler(load_dataset("digits", split="test"), 3, 1, 2, seed=0).sample()
    figures = [
        annotated_episode_figure(episode, class_names=["a", "b", "c"]),
        maml_landscape_figure(QuadraticTasks.default(), alpha=0.2, steps=2),
        contrastive_geometry_figure({"NT-Xent": contrastive_toy(steps=5)}),
        embedding_map_figure({"random": torch.randn(30, 4)},
                             torch.arange(3).repeat_interleave(10)),
    ]
    for fig in figures:
        assert fig.axes
        plt.close(fig)
    with pytest.raises(ValueError, match="one name per class"):
        annotated_episode_figure(episode, class_names=["a"])


def test_glue_returns_its_value() -> None:
    from companion.viz import glue

    assert glue("test_value", 0.5) == 0.5


def _write_results(folder, gpu_measured: bool = False) -> None:
    import json

    machine = "2 CPU cores (x86_64), no GPU, torch 2.13.0+cpu"
    times = {p: {"machine": machine, "seconds": {"ch02_metric": s, "ch03_gradient": 2 * s}}
             for p, s in (("smoke", 15.0), ("cpu", 263.2))}
    if gpu_measured:
        times["gpu"] = {"machine": "8 CPU cores (x86_64), Tesla T4, torch 2.5",
                        "seconds": {"ch02_metric": 312.0}}
    costs = {"device": {"name": "NVIDIA T4"},
             "chapters": {"ch02_metric": {"gpu_estimated_s": 51.4, "full_estimated_s": 700.0},
                          "ch03_gradient": {"gpu_estimated_s": 400.0,
                                            "full_estimated_s": 4.5 * 3_600}}}
    (folder / "chapter_times.json").write_text(json.dumps(times))
    (folder / "profile_costs.json").write_text(json.dumps(costs))


def test_profile_costs_measured_and_estimated(tmp_path) -> None:
    from companion.viz import profile_costs

    _write_results(tmp_path)
    table = profile_costs("ch02_metric", results=str(tmp_path))
    assert table.rows == [
        ("smoke", "15 s", "measured, 2 CPU cores"),
        ("cpu", "4.4 min", "measured, 2 CPU cores"),  # 263.2 s
        ("gpu", "about 51 s", "estimated for an NVIDIA T4, not yet measured"),
        ("full", "about 11.7 min",
         "estimated for an NVIDIA T4, not yet measured, the papers' protocols")]
    assert table._repr_markdown_().splitlines()[3] == "| `cpu` | 4.4 min | measured, 2 CPU cores |"
    ch03 = profile_costs("ch03_gradient", results=str(tmp_path)).rows
    assert (ch03[2][1], ch03[3][1]) == ("about 6.7 min", "about 4.5 h")
    missing = profile_costs("ch05_contrastive", results=str(tmp_path))
    assert [r[1] for r in missing.rows] == ["not measured"] * 3 + ["up to hours"]
    assert missing.rows[3][2] == "the papers' protocols"


def test_profile_costs_a_gpu_measurement_replaces_the_estimate(tmp_path) -> None:
    from companion.viz import profile_costs

    _write_results(tmp_path, gpu_measured=True)
    gpu = profile_costs("ch02_metric", results=str(tmp_path)).rows[2]
    assert gpu == ("gpu", "5.2 min", "measured, Tesla T4")


def test_profile_costs_without_the_repository(tmp_path) -> None:
    from companion.viz import profile_costs

    table = profile_costs("ch02_metric", results=str(tmp_path / "absent"))  # Colab: no bench/
    assert table.rows == [("full", "up to hours", "the papers' protocols")]
    assert "bench/results/" in str(table) and "lacks" in str(table)


def test_profile_costs_of_the_book_name_every_chapter() -> None:
    import json
    from pathlib import Path

    from companion.viz import profile_costs

    results = Path(__file__).resolve().parents[1] / "bench" / "results"
    estimated = json.loads((results / "profile_costs.json").read_text())["chapters"]
    for chapter in sorted(p.stem for p in (results.parents[1] / "book").glob("ch*.md")):
        rows = dict((name, time) for name, time, _ in profile_costs(chapter).rows)
        assert set(rows) == {"smoke", "cpu", "gpu", "full"}, chapter
        assert "not measured" not in rows.values(), (chapter, rows)
        gpu = estimated[chapter]["gpu_estimated_s"]
        assert 0 < gpu <= estimated[chapter].get("full_estimated_s", gpu), chapter
