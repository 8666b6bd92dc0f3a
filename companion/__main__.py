"""Command line: ``python -m companion data info|episode ...``.

Examples::

    python -m companion data info glyphs
    python -m companion data info omniglot            # needs the cache or the network
    python -m companion data episode glyphs --ways 5 --shots 1 --out episode.png

Errors in the arguments or missing data end with a one-line message on stderr and exit
status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from companion.data import DATASETS, DatasetNotFoundError, EpisodeSampler, load_dataset

MAX_FIGURE_WAYS = 20  # rows of an episode PNG that stay readable
MAX_FIGURE_COLUMNS = 20


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more; got {value}")
    return value


def _data_info(args: argparse.Namespace) -> int:
    splits = [args.split] if args.split else list(DATASETS[args.name])
    rows = [load_dataset(args.name, s, root=args.root).summary() for s in splits]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{args.name}: {len(rows)} split(s); images are ink = 1 in [0, 1]")
    print(f"{'split':<12}{'classes':>8}{'images':>9}{'per class':>11}  {'shape':<14}source")
    for r in rows:
        shape = "x".join(str(s) for s in r["image_shape"])
        print(f"{r['split']:<12}{r['classes']:>8}{r['images']:>9}{r['images_per_class']!s:>11}  "
              f"{shape:<14}{r['source']}")
    return 0


def _data_episode(args: argparse.Namespace) -> int:
    from companion.viz import episode_figure

    if args.ways > MAX_FIGURE_WAYS or args.shots + args.queries > MAX_FIGURE_COLUMNS:
        raise ValueError(
            f"an episode figure shows at most {MAX_FIGURE_WAYS} ways and "
            f"{MAX_FIGURE_COLUMNS} shots + queries; got --ways {args.ways}, "
            f"--shots {args.shots}, --queries {args.queries}"
        )
    dataset = load_dataset(args.name, args.split, root=args.root)
    sampler = EpisodeSampler(dataset, args.ways, args.shots, args.queries, seed=args.seed)
    episode = sampler.sample()
    title = f"{args.name}/{args.split}: {args.ways}-way {args.shots}-shot (seed {args.seed})"
    fig = episode_figure(episode, title=title)
    fig.savefig(args.out, dpi=120)
    print(f"saved a {args.ways}-way {args.shots}-shot {args.queries}-query episode of "
          f"{args.name}/{args.split} to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m companion", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    data = commands.add_parser("data", help="inspect datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True)

    info = data_commands.add_parser("info", help="classes, images and shapes of each split")
    episode = data_commands.add_parser("episode", help="save a PNG of one episode")
    for p in (info, episode):
        p.add_argument("name", choices=list(DATASETS), help="dataset")
        p.add_argument("--root", default=None, help="data folder (default: $COMPANION_DATA)")
    info.add_argument("--split", default=None, help="one split only (default: every split)")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(run=_data_info)

    episode.add_argument("--split", default="train")
    episode.add_argument("--ways", type=_positive, default=5)
    episode.add_argument("--shots", type=_positive, default=1)
    episode.add_argument("--queries", type=_non_negative, default=3)
    episode.add_argument("--seed", type=int, default=0)
    episode.add_argument("--out", default="episode.png", help="PNG to write")
    episode.set_defaults(run=_data_episode)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, DatasetNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
