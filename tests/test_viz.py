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
