"""Figures the chapters share: episodes, image grids, accuracy bars.

Functions return a ``matplotlib`` figure and never call ``plt.show()``; a notebook shows
the returned figure, the command line saves it.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from companion.data.episodes import Episode


def _as_image(x: torch.Tensor) -> torch.Tensor:
    """``(C, H, W)`` -> ``(H, W)`` or ``(H, W, C)`` on the CPU, for ``imshow``."""
    x = x.detach().float().cpu()
    return x[0] if x.shape[0] == 1 else x.permute(1, 2, 0).clamp(0, 1)


def image_grid(
    images: torch.Tensor,
    *,
    rows: int | None = None,
    titles: list[str] | None = None,
    cell: float = 0.9,
    cmap: str = "Greys",
) -> Figure:
    """Images laid out in a grid (ink dark on white paper for grey-scale sets).

    Shape:
        - images: ``(M, C, H, W)`` or ``(R, M, C, H, W)`` (then ``R`` rows)
    """
    if images.ndim == 5:
        rows, images = images.shape[0], images.flatten(0, 1)
    if images.ndim != 4:
        raise ValueError(
            f"images must be (M, C, H, W) or (R, M, C, H, W); got {tuple(images.shape)}"
        )
    rows = rows or 1
    cols = -(-images.shape[0] // rows)
    fig, axes = plt.subplots(rows, cols, figsize=(cell * cols, cell * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < images.shape[0]:
            ax.imshow(_as_image(images[i]), cmap=cmap, vmin=0, vmax=1)
            if titles is not None and i < len(titles):
                ax.set_title(titles[i], fontsize=7)
    fig.tight_layout(pad=0.2)
    return fig


def episode_figure(
    episode: Episode,
    *,
    max_queries: int = 5,
    predictions: torch.Tensor | None = None,
    title: str | None = None,
    cell: float = 0.85,
) -> Figure:
    """One row per class: its support shots, a gap, then some of its queries.

    With ``predictions`` (a label per query) the queries are framed green when right
    and red when wrong.
    """
    ways, shots, queries = episode.ways, episode.shots, episode.queries
    shown = min(queries, max_queries)
    cols = shots + (1 + shown if shown else 0)
    fig, axes = plt.subplots(ways, cols, figsize=(cell * cols, cell * ways + 0.4), squeeze=False)
    for c in range(ways):
        for j in range(cols):
            ax = axes[c, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < shots:
                ax.imshow(_as_image(episode.support_x[c * shots + j]), cmap="Greys", vmin=0, vmax=1)
                color = "tab:blue"
            elif j > shots:
                q = c * queries + (j - shots - 1)
                ax.imshow(_as_image(episode.query_x[q]), cmap="Greys", vmin=0, vmax=1)
                color = "0.6"
                if predictions is not None:
                    color = "tab:green" if int(predictions[q]) == c else "tab:red"
            else:
                ax.set_axis_off()
                continue
            for spine in ax.spines.values():
                spine.set_edgecolor(color)
                spine.set_linewidth(2)
        axes[c, 0].set_ylabel(f"class {c}", fontsize=8)
    axes[0, 0].set_title("support", fontsize=8, loc="left")
    if shown:
        axes[0, shots + 1].set_title("queries", fontsize=8, loc="left")
    fig.suptitle(title or f"{ways}-way {shots}-shot episode", fontsize=10)
    fig.tight_layout(pad=0.3)
    return fig


class Source:
    """A package object's source code, shown highlighted in a notebook (book and Colab alike).

    ``show_source(prototypes)`` as the last line of a code cell displays the function as
    the package defines it: HTML with inline colours (no stylesheet needed, so it renders
    the same in the built book, Jupyter and Colab), plain text elsewhere. It replaces the
    book's ``literalinclude`` directives, which a notebook cannot render.
    """

    def __init__(self, obj: object) -> None:
        import inspect

        try:
            lines, first = inspect.getsourcelines(obj)
        except (OSError, TypeError) as error:
            raise TypeError(f"cannot show the source of {obj!r}: {error}") from None
        self.code = "".join(lines)
        module = inspect.getmodule(obj)
        path = (module.__name__.replace(".", "/") + ".py") if module else "?"
        self.where = f"{path}, lines {first}-{first + len(lines) - 1}"

    def __repr__(self) -> str:
        return f"# {self.where}\n{self.code}"

    def _repr_html_(self) -> str:
        from html import escape

        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import PythonLexer

        body = highlight(self.code, PythonLexer(),
                         HtmlFormatter(noclasses=True, style="friendly", nowrap=False))
        return (f'<div class="companion-source"><div style="font-size: 0.8em; color: #666;">'
                f"{escape(self.where)}</div>{body}</div>")


def show_source(obj: object) -> Source:
    """The source of a package function or class, for display (see :class:`Source`).

    Example:
        >>> from companion.meta.protonet import prototypes
        >>> print(repr(show_source(prototypes)).splitlines()[0])  # doctest: +ELLIPSIS
        # companion/meta/protonet.py, lines ...
    """
    return Source(obj)
