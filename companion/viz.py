"""Figures the chapters share: episodes, image grids, accuracy bars.

Functions return a ``matplotlib`` figure and never call ``plt.show()``; a notebook shows
the returned figure, the command line saves it.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from companion.data.episodes import Episode


def _as_image(x: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` -> ``(H, W)`` or ``(H, W, C)``, a NumPy array for ``imshow``."""
    x = x.detach().float().cpu()
    return (x[0] if x.shape[0] == 1 else x.permute(1, 2, 0).clamp(0, 1)).numpy()


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


def annotated_episode_figure(episode: Episode, *, class_names: list[str] | None = None,
                             max_queries: int = 3) -> Figure:
    """:func:`episode_figure` with the vocabulary written on it: support, query, ways, shots.

    ``class_names`` (one per class, e.g. the dataset's names of the drawn classes) are
    written beside each row, to show that labels ``0..N-1`` are relabelled dataset classes.
    """
    ways, shots = episode.ways, episode.shots
    if class_names is not None and len(class_names) != ways:
        raise ValueError(f"class_names must have one name per class ({ways}); "
                         f"got {len(class_names)}")
    fig = episode_figure(episode, max_queries=max_queries, title=" ")
    axes = fig.axes
    cols = len(axes) // ways
    for ax in axes[:cols]:
        ax.set_title("", loc="left")  # the annotations below say it in full
    fig.set_size_inches(fig.get_size_inches() + (1.6 if class_names else 0.4, 0.9))
    fig.subplots_adjust(top=0.80, bottom=0.09, right=0.72 if class_names else 0.9, left=0.1)
    top_left, top_support_end = axes[0].get_position(), axes[shots - 1].get_position()
    query_axes = [a for a in axes[:cols] if a.axison][shots:]
    y = top_left.y1 + 0.03
    fig.text((top_left.x0 + top_support_end.x1) / 2, y,
             f"support set $\\mathcal{{S}}$\n$K = {shots}$ labelled\nshot(s) per class",
             ha="center", va="bottom", fontsize=8, color="tab:blue")
    if query_axes:
        first, last = query_axes[0].get_position(), query_axes[-1].get_position()
        fig.text((first.x0 + last.x1) / 2, y,
                 f"query set $\\mathcal{{Q}}$\n{episode.queries} per class: the learner\n"
                 "must label these", ha="center", va="bottom", fontsize=8, color="0.35")
    for c in range(ways):
        row = axes[c * cols].get_position()
        if class_names:
            fig.text(axes[c * cols + cols - 1].get_position().x1 + 0.01, (row.y0 + row.y1) / 2,
                     f"= {class_names[c]}", va="center", fontsize=7, color="0.3")
    bottom = axes[(ways - 1) * cols].get_position()
    fig.text(0.5, bottom.y0 - 0.02,
             f"one task: $N = {ways}$ ways (rows), classes the learner has never seen, "
             f"relabelled 0..{ways - 1}", ha="center", va="top", fontsize=8)
    return fig


def maml_landscape_figure(tasks, *, alpha: float = 0.3, steps: int = 1,
                          extent: float = 2.6) -> Figure:
    """MAML's initialisation against pretraining's on 2-D quadratic tasks.

    Grey contours: the average task loss, whose minimiser (black cross) is what training on
    all tasks at once finds. Red dot: MAML's initialisation for ``steps`` inner steps of
    size ``alpha`` (:meth:`companion.toys.QuadraticTasks.maml_init`). Lines: the inner
    steps on each task from either point (solid from MAML's, dashed from pretraining's),
    towards that task's optimum (stars).
    """
    grid = torch.linspace(-extent, extent, 121, dtype=torch.float64)
    gx, gy = torch.meshgrid(grid, grid, indexing="xy")
    average = tasks.loss(torch.stack([gx, gy], dim=-1)).mean(-1)
    pre, maml = tasks.average_init(), tasks.maml_init(alpha, steps)
    fig, ax = plt.subplots(figsize=(5.6, 5.4))
    ax.contour(gx.numpy(), gy.numpy(), average.numpy(), levels=14, colors="0.75",
               linewidths=0.8)
    colors = plt.get_cmap("tab10").colors
    for start, style, name in ((maml, "-", "MAML"), (pre, "--", "pretrained")):
        path = tasks.adapt(start, alpha, steps).numpy()
        for t in range(tasks.tasks):
            ax.plot(path[t, :, 0], path[t, :, 1], style, marker=".", color=colors[t], lw=1.4)
        after = tasks.maml_loss(start, alpha, steps).item()
        ax.plot([], [], style, color="0.3", label=f"{steps} step(s) from {name}: "
                f"mean loss {after:.2f}")
    for t in range(tasks.tasks):
        ax.plot(*tasks.optima[t].tolist(), marker="*", ms=14, color=colors[t], ls="none")
    ax.plot(*pre.tolist(), marker="x", ms=10, mew=2.5, color="black", ls="none",
            label="pretrained: minimises the average loss")
    ax.plot(*maml.tolist(), marker="o", ms=8, color="tab:red", ls="none",
            label="MAML: minimises the loss after adapting")
    ax.set_xlim(-extent, extent)
    ax.set_ylim(-extent, extent)
    ax.set_aspect("equal")
    ax.set_xlabel(r"$\theta_1$")
    ax.set_ylabel(r"$\theta_2$")
    ax.set_title(f"inner step size $\\alpha = {alpha:g}$, {steps} inner step(s)", fontsize=10)
    fig.legend(fontsize=7, loc="lower center", ncol=2, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig


def contrastive_geometry_figure(runs: dict[str, dict[str, torch.Tensor]]) -> Figure:
    """Embeddings on the unit circle before and after training, one panel per toy run.

    The runs come from :func:`companion.toys.contrastive_toy`.

    ``runs`` maps a panel title to a toy run; the first run's ``before`` is drawn first.
    Each point keeps its colour across panels, so a reader can follow it.
    """
    if not runs:
        raise ValueError("runs must hold at least one toy run")
    panels = [("before training", next(iter(runs.values()))["before"])]
    panels += [(name, run["after"]) for name, run in runs.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels), 3.5))
    circle = torch.linspace(0, 2 * torch.pi, 200)
    for ax, (name, z) in zip(axes, panels, strict=True):
        ax.plot(torch.cos(circle).numpy(), torch.sin(circle).numpy(), color="0.85", lw=1)
        colors = plt.get_cmap("hsv")(torch.linspace(0, 0.92, len(z)).numpy())
        ax.scatter(z[:, 0].numpy(), z[:, 1].numpy(), c=colors, s=60, edgecolors="black",
                   linewidths=0.5, zorder=3)
        spread = z.mean(0).norm().item()
        ax.set_title(f"{name}\n|mean z| = {spread:.2f}", fontsize=9)
        ax.set_xlim(-1.3, 1.3)
        ax.set_ylim(-1.3, 1.3)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def embedding_map_figure(embeddings: dict[str, torch.Tensor], labels: torch.Tensor, *,
                         seed: int = 0) -> Figure:
    """A t-SNE map of each set of embeddings, points coloured by class.

    A trained encoder draws each class as its own island; an untrained one mixes them.
    t-SNE (van der Maaten & Hinton 2008, scikit-learn's) keeps neighbours, not distances:
    read the islands, not the gaps between them.

    Shape:
        - embeddings: each ``(M, D)``, one row per image, in the order of ``labels``
        - labels: ``(M,)``
    """
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    fig, axes = plt.subplots(1, len(embeddings), figsize=(3.6 * len(embeddings), 3.6),
                             squeeze=False)
    classes = labels.unique()
    for ax, (name, z) in zip(axes[0], embeddings.items(), strict=True):
        if z.shape[0] != labels.shape[0]:
            raise ValueError(f"{name}: {z.shape[0]} embeddings for {labels.shape[0]} labels")
        tsne = TSNE(n_components=2, perplexity=min(30.0, (z.shape[0] - 1) / 3), init="pca",
                    random_state=seed)
        # scikit-learn's OpenMP threads and torch's spin against each other on a small
        # machine (43 s instead of 6 s on two busy cores); one thread is plenty here.
        with threadpool_limits(limits=1, user_api="openmp"):
            xy = tsne.fit_transform(z.detach().double().cpu().numpy())
        for i, c in enumerate(classes.tolist()):
            pick = (labels == c).numpy()
            ax.scatter(xy[pick, 0], xy[pick, 1], s=12, color=plt.get_cmap("tab20")(i % 20))
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def glue(name: str, value: object) -> object:
    """Hand ``value`` to the built book's prose as ``{glue:text}`name``` and return it.

    In the book (myst-nb), the prose shows the number this run computed, so the text and
    the results cannot disagree; format it in the role, e.g. ``{glue:text}`acc:.1f```.
    Elsewhere (Colab, plain Jupyter, where myst-nb is absent) nothing is recorded and the
    value is simply returned.
    """
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        return value
    myst_glue(name, value, display=False)
    return value


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5_400 else f"{seconds / 3_600:.1f} h"


class ProfileCosts:
    """A chapter's time per compute profile, as a Markdown table (see :func:`profile_costs`).

    Displays in any notebook through ``_repr_markdown_``; ``str()`` is the same Markdown.
    """

    def __init__(self, rows: list[tuple[str, str, str]], note: str = "") -> None:
        self.rows = rows  # (profile, time, how it is known)
        self.note = note

    def __str__(self) -> str:
        lines = ["| profile | time | |", "|---|---|---|"]
        lines += [f"| `{name}` | {time} | {how} |" for name, time, how in self.rows]
        return "\n".join(lines) + (f"\n\n{self.note}" if self.note else "")

    def _repr_markdown_(self) -> str:
        return str(self)

    def __repr__(self) -> str:
        return str(self)


def profile_costs(chapter: str, results: str | None = None) -> ProfileCosts:
    """What running ``chapter`` (a notebook's stem, ``"ch02_metric"``) costs in each profile.

    ``smoke`` and ``cpu`` (and ``gpu`` or ``full``, once measured) come from
    ``bench/results/chapter_times.json`` (``bench/chapter_times.py`` runs every chapter);
    until a GPU run measures them, ``gpu`` and ``full`` are the estimates for a T4 in
    ``bench/results/profile_costs.json`` (``bench/profile_costs.py``), and ``full`` without
    either is the papers' protocols, up to hours. ``results`` is that folder (default: the
    repository's). Where it is absent, as when the package is installed without the
    repository (Colab), the table says so and gives ``full`` only.

    Example:
        >>> print(profile_costs("ch02_metric", results="/nowhere").rows[-1][1])
        up to hours
    """
    folder = Path(results) if results else Path(__file__).resolve().parents[1] / "bench" / "results"
    times_file, costs_file = folder / "chapter_times.json", folder / "profile_costs.json"
    if not times_file.exists():
        return ProfileCosts([("full", "up to hours", "the papers' protocols")],
                            "The measured times live in the repository's `bench/results/`, "
                            "which this installation lacks.")
    times = json.loads(times_file.read_text())
    costs = json.loads(costs_file.read_text()) if costs_file.exists() else {}
    rows = []
    for name in ("smoke", "cpu", "gpu", "full"):
        run, estimate = times.get(name, {}), costs.get("chapters", {}).get(chapter, {})
        papers = ", the papers' protocols" if name == "full" else ""
        if chapter in run.get("seconds", {}):
            cores, device = run["machine"].split(", ")[:2]  # "2 CPU cores (x86_64)", "no GPU"
            where = cores.split(" (")[0] if device == "no GPU" else device
            rows.append((name, _duration(run["seconds"][chapter]), f"measured, {where}{papers}"))
        elif f"{name}_estimated_s" in estimate:
            rows.append((name, f"about {_duration(estimate[f'{name}_estimated_s'])}",
                         f"estimated for an {costs['device']['name']}, not yet measured"
                         f"{papers}"))
        elif name == "full":
            rows.append((name, "up to hours", "the papers' protocols"))
        else:
            rows.append((name, "not measured", ""))
    return ProfileCosts(rows)
