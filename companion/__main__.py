"""Command line: ``python -m companion train|eval|data ...``.

Examples::

    python -m companion data info glyphs
    python -m companion data info omniglot            # needs the cache or the network
    python -m companion data info cifar_fs            # the same (CIFAR-100's 161 MB archive)
    python -m companion data episode glyphs --ways 5 --shots 1 --out episode.png
    python -m companion train protonet --dataset omniglot --ways 5 --shots 1 --profile cpu
    python -m companion eval --checkpoint runs/protonet-omniglot-5w1s/checkpoint.pt --shots 5
    python -m companion train maml --dataset omniglot --set inner_steps_test=3 --lr 3e-4
    python -m companion train protonet --dataset cifar_fs --backbone resnet12 --profile gpu
    torchrun --nproc_per_node=2 -m companion train simclr --dataset glyphs --device cpu

``train`` meta-trains on the dataset's training split, validates on its validation split,
leaves ``checkpoint.pt`` and ``metrics.json`` in ``--out`` (it resumes from a checkpoint
already there), then evaluates on the test split. ``eval`` rebuilds the learner from a
checkpoint and evaluates it, on other episodes or another dataset if asked.

Where the settings come from: ``--ways/--shots/--queries`` shape the test episodes; the
training recipe (training episodes, steps, tasks or images per step, optimiser, Omniglot's
rotations, config fields) is the method's preset for the profile (``--profile`` or
``$COMPANION_PROFILE``; see :data:`companion.methods.REGISTRY`), then the method's
optimiser, then the profile's sizes (images at the profile's ``image_size``, except
``cifar_fs``, which keeps the benchmark's 32x32; the Conv-4 backbone, except ResNet-12 for
``cifar_fs`` in the ``full`` profile), and each flag overrides its part. ``--set
FIELD=VALUE`` (repeatable) sets a field of the method's config dataclass and nothing else
(an unknown field is an error naming the allowed ones); at ``eval`` it overrides the trained
value (test-time fields such as ``inner_steps_test``; fields that change the weights' shapes
are refused).

Errors in the arguments or missing data end with a one-line message on stderr and exit
status 2.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from companion import distributed, methods
from companion.data import (
    DATASETS,
    DatasetNotFoundError,
    EpisodeSampler,
    ImageDataset,
    load_dataset,
)
from companion.data.batches import ImageBatchSampler
from companion.evaluate import EvalResult, embed, knn_probe, linear_probe, split_per_class
from companion.guided.maxl import HierarchyBatches, hierarchy_split, primary_accuracy
from companion.profiles import PROFILE_NAMES, Profile, get_profile
from companion.protocols import generators_of
from companion.ssl.vae import VAE
from companion.tasks import TASKS
from companion.tasks.mixture import Mixture, pooled
from companion.train import (
    CHECKPOINT,
    OPTIMIZERS,
    SCHEDULES,
    TrainConfig,
    TrainResult,
    evaluate_learner,
    fit,
    load_checkpoint,
    resolve_device,
    write_metrics,
)

TRAINED_ON = {"images": "unlabeled images", "hierarchy": "images labelled twice (alphabet and "
              "character)"}
HIERARCHY_GROUPS = 20  # MAXL's primary classes at most: CIFAR-100's 20 superclasses
MAX_FIGURE_WAYS = 20  # rows of an episode PNG that stay readable
MAX_FIGURE_COLUMNS = 20

SPLITS: dict[str, tuple[str, str | None, str]] = {  # (train, validation, test) of each dataset
    "glyphs": ("train", "val", "test"),
    "digits": ("train", "val", "test"),
    # The papers train on Lake et al.'s background set and test on the evaluation set. The
    # "val" split is part of the background set, so validating on it would measure
    # training classes: validate with --train-split train --val-split val instead.
    "omniglot": ("background", None, "evaluation"),
    "cifar_fs": ("train", "val", "test"),  # Bertinetto et al.'s 64/16/20 classes
}
IMAGE_SIZES = {"cifar_fs": 32}  # the benchmark's size; every other dataset: the profile's


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


def _aux_weight(text: str) -> float | str:
    if text == "meta":
        return text
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number or 'meta'; got {text}")
    return value


def _datasets(text: str) -> list[str]:
    names = [n for n in text.split(",") if n]
    unknown = [n for n in names if n not in DATASETS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"expected datasets among {', '.join(DATASETS)}, "
                                         f"comma-separated; got {text!r}")
    return names


def _assignment(text: str) -> tuple[str, Any]:
    """``FIELD=VALUE`` -> ``(FIELD, VALUE)``; VALUE is a Python literal or else a string."""
    field, sep, value = text.partition("=")
    if not sep or not field.isidentifier():
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE, e.g. inner_steps_test=5; "
                                         f"got {text!r}")
    try:
        return field, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return field, value  # a bare word: a string such as cosine or head


def _config_overrides(method: str, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    overrides = dict(pairs)
    methods.check_config_fields(method, overrides)
    return overrides


def _data_info(args: argparse.Namespace) -> int:
    splits = [args.split] if args.split else list(DATASETS[args.name])
    rows = [load_dataset(args.name, s, root=args.root).summary() for s in splits]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    pixels = "RGB" if rows[0]["image_shape"][0] == 3 else "ink = 1"
    print(f"{args.name}: {len(rows)} split(s); images are {pixels} in [0, 1]")
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


def _load(data: dict[str, Any], split: str, root: str | None, *,
          training: bool = False) -> ImageDataset:
    """One split as the run describes it; glyph subsets and rotations apply to training."""
    options: dict[str, Any] = {}
    if training and data["dataset"] == "glyphs" and data["glyph_alphabets"]:
        options["alphabets"] = data["glyph_alphabets"]
    if training and data["dataset"] == "omniglot":
        options["rotations"] = data["rotations"]
    return load_dataset(data["dataset"], split, root=root, image_size=data["image_size"],
                        **options)


def _check_ways(sampler: EpisodeSampler) -> EpisodeSampler:
    if sampler.ways < 2:
        raise ValueError(f"--ways must be at least 2 (one class leaves nothing to tell apart); "
                         f"got {sampler.ways}")
    return sampler


def _sampler(data: dict[str, Any], split: str, root: str | None, *, seed: int) -> EpisodeSampler:
    """Test or validation episodes of ``split``, shaped as ``data`` says."""
    return _check_ways(EpisodeSampler(_load(data, split, root), data["ways"], data["shots"],
                                      data["queries"], seed=seed))


def _evaluate(learner: torch.nn.Module, sampler: EpisodeSampler, episodes: int, *,
              device: str, seed: int, quiet: bool) -> EvalResult:
    with torch.random.fork_rng(devices=[]):  # a learner may draw random numbers: seed them
        torch.manual_seed(seed)
        return evaluate_learner(learner, sampler, episodes, device=resolve_device(device),
                                progress=not quiet)


def _recipe(args: argparse.Namespace, method: methods.Method, profile: Profile) -> dict[str, Any]:
    """The run's settings: a flag wins over the task source's preset for the profile, then
    the method's, then the method's training defaults (and, for what none sets, the
    profile)."""
    preset = method.preset(profile.name)
    if args.tasks != "labels":
        tasks = TASKS[args.tasks].preset(profile.name, method.name)
        options = {**tasks.pop("options", {}), **dict(args.task_set)}
        preset = {**preset, **tasks, "set": {**preset.get("set", {}), **tasks.get("set", {})}}
    else:
        if args.task_set or args.unlabeled or args.generator:
            raise ValueError("--task-set, --unlabeled and --generator shape tasks made without "
                             "labels; give --tasks too")
        options = {}
    flags = {"steps": args.steps, "meta_batch": args.meta_batch, "lr": args.lr,
             "optimizer": args.optimizer, "schedule": args.schedule,
             "train_ways": args.train_ways, "train_shots": args.train_shots,
             "train_queries": args.train_queries, "rotations": args.rotations}
    recipe = {**method.training, **preset, **{k: v for k, v in flags.items() if v is not None}}
    recipe["set"] = {**preset.get("set", {}), **_config_overrides(method.name, args.set)}
    recipe.setdefault("train_ways", args.ways)
    recipe.setdefault("train_shots", args.shots)
    recipe.setdefault("train_queries", args.queries)
    recipe.setdefault("rotations", False)
    recipe["options"] = options
    if args.dataset != "omniglot":  # rotations are Omniglot's extra classes
        if args.rotations:
            raise ValueError(f"--rotations applies to omniglot only; got --dataset {args.dataset}")
        recipe["rotations"] = False
    return recipe


def _train(args: argparse.Namespace) -> int:
    """``train``, in one process or, under ``torchrun``, on every rank (see
    :mod:`companion.distributed`): ``fit`` splits each batch over the ranks and rank 0
    alone writes the files, prints and runs the test evaluation."""
    distributed.setup(args.device)  # under torchrun: join the group; CUDA: GPU LOCAL_RANK
    try:
        return _train_run(args)
    finally:
        distributed.teardown()


def _train_run(args: argparse.Namespace) -> int:
    method = methods.get(args.method)
    profile = get_profile(args.profile)
    recipe = _recipe(args, method, profile)
    if method.fixed_ways and recipe["train_ways"] != args.ways:
        raise ValueError(f"{method.name} has a head of --train-ways {recipe['train_ways']} "
                         f"outputs and tests on --ways {args.ways}; they must be equal")
    train_split, val_split, test_split = SPLITS[args.dataset]
    train_split = args.train_split or train_split
    val_split = None if args.val_split == "none" else args.val_split or val_split
    if args.dataset == "omniglot" and train_split == "background" and val_split in ("train",
                                                                                    "val"):
        raise ValueError(f"omniglot's {val_split!r} split is part of the background set it "
                         "trains on; use --train-split train --val-split val")
    data = {"dataset": args.dataset, "train_split": train_split, "val_split": val_split,
            "test_split": test_split, "ways": args.ways, "shots": args.shots,
            "queries": args.queries, "train_ways": recipe["train_ways"],
            "train_shots": recipe["train_shots"], "train_queries": recipe["train_queries"],
            "image_size": IMAGE_SIZES.get(args.dataset, profile.image_size),
            "rotations": recipe["rotations"],
            "glyph_alphabets": profile.glyph_alphabets, "seed": args.seed,
            "tasks": args.tasks, "task_options": recipe["options"], "encoder": args.encoder,
            "unlabeled": args.unlabeled, "mix": args.mix, "generator": args.generator}
    images = method.trains_on == "images"
    hierarchy = method.trains_on == "hierarchy"
    train_set = _load(data, train_split, args.root, training=True)
    if args.train_ways is None and data["train_ways"] > train_set.num_classes:
        data["train_ways"] = train_set.num_classes  # a preset's higher way, on a small set
    encoder = _encoder(args.encoder) if args.encoder else None
    if (images or hierarchy) and args.tasks != "labels":
        raise ValueError(f"--tasks {args.tasks} makes few-shot tasks for a meta-learner; "
                         f"{method.name} trains on {TRAINED_ON[method.trains_on]} (drop "
                         "--tasks)")
    if images:  # unlabeled batches; the episodes below test the few-shot probe
        train = ImageBatchSampler(train_set, seed=args.seed)
    elif hierarchy:  # MAXL: alphabets of characters; tested on held-out drawings below
        train, held_out = _hierarchy(method, train_set, recipe, data, args)
    elif args.tasks == "labels":
        train = _check_ways(EpisodeSampler(train_set, data["train_ways"], data["train_shots"],
                                           data["train_queries"], seed=args.seed))
    else:
        train = _task_source(args.tasks, train_set, data, encoder, recipe["options"], args)
    val = _sampler(data, val_split, args.root, seed=args.seed) if val_split else None
    test = None if args.no_eval or hierarchy else _sampler(data, test_split, args.root,
                                                           seed=args.seed)

    batch = recipe.get("meta_batch") or (method.batch(profile.batch_size) if images or hierarchy
                                         else profile.meta_batch)
    steps = recipe.get("steps") or method.default_steps(profile, len(train_set))
    every = args.val_every or max(1, steps // 5)
    loop = {k: v for k, v in recipe.items() if k in TrainConfig.__dataclass_fields__}
    config = TrainConfig(**{**loop, "steps": steps, "meta_batch": batch,
                            "log_every": max(1, steps // 50), "val_every": every,
                            "val_episodes": min(100, profile.eval_episodes),
                            "checkpoint_every": every, "seed": args.seed,
                            "device": args.device, "amp": args.amp,
                            "channels_last": args.channels_last, "compile": args.compile})
    learner_spec = {"method": method.name, "ways": data["train_ways"],
                    "image_size": data["image_size"],
                    "in_channels": train_set.image_shape[0],
                    "width": args.width or recipe.get("width") or profile.width,
                    "seed": args.seed,
                    "backbone": args.backbone or methods.default_backbone(method, profile.name,
                                                                          args.dataset),
                    **recipe["set"]}
    if args.aux:  # a self-supervised loss beside the episodic one (chapters 7 and 8)
        learner_spec.update(aux=args.aux, aux_weight=args.aux_weight)
    with torch.random.fork_rng(devices=[]):  # the initial weights follow --seed
        torch.manual_seed(args.seed)
        learner = methods.build_learner(**learner_spec)
    if encoder is not None:  # start from a trained encoder (a checkpoint in --out wins)
        methods.load_encoder(methods.encoder_of(learner), encoder)
    out = Path(args.out or Path("runs") / f"{args.method}-{args.dataset}-{args.ways}w{args.shots}s")
    result = fit(learner, train, config, val_sampler=val, out_dir=out, resume=not args.restart,
                 progress=not args.quiet, spec={"learner": learner_spec, "data": data},
                 stop_after=args.stop_after)
    if not distributed.is_main():
        return 0  # rank 0 reports and tests
    if not result.finished:
        print(f"stopped after step {result.step} of {config.steps}; saved {out / CHECKPOINT} "
              "(run the same command again to resume)")
        return 0
    best = result.best_val
    print(f"trained {args.method} on {args.dataset}/{train_split} for {result.step} steps "
          f"in {result.train_seconds:.1f} s" + (f"; best validation accuracy "
          f"{100 * best['accuracy']:.2f} % at step {best['step']}" if best else ""))
    print(f"saved {out / CHECKPOINT}")
    if hierarchy and not args.no_eval:
        return _primary_test(learner, train, held_out, result, out)
    if test is not None:
        episodes = args.episodes or profile.eval_episodes
        evaluation = _evaluate(learner, test, episodes, device=args.device, seed=args.seed,
                               quiet=args.quiet)
        write_metrics(out, result, evaluation, test)
        print(f"accuracy = {evaluation}")
    return 0


def _hierarchy(method: methods.Method, train_set: ImageDataset, recipe: dict[str, Any],
               data: dict[str, Any], args: argparse.Namespace
               ) -> tuple[HierarchyBatches, torch.Tensor]:
    """MAXL's training batches (groups of ``psi`` classes, each class's first half of
    images) and the held-out images its primary task is tested on."""
    if data["dataset"] not in ("glyphs", "omniglot"):
        raise ValueError(f"{method.name} needs classes grouped into alphabets: --dataset "
                         f"glyphs or omniglot; got {data['dataset']}")
    psi = recipe["set"].get("psi", method.config.psi)
    subset, train_index, held_out = hierarchy_split(train_set, per_group=psi,
                                                    groups=HIERARCHY_GROUPS)
    data.update(train_ways=int(len(subset.groups.unique())), hierarchy_classes=psi,
                hierarchy_groups=HIERARCHY_GROUPS)
    return HierarchyBatches(subset, train_index, seed=args.seed), held_out


def _binomial_ci95(accuracy: float, n: int) -> float:
    """Half-width of the 95% interval of an accuracy over ``n`` images (normal approx.)."""
    return 1.96 * math.sqrt(accuracy * (1 - accuracy) / n)


def _primary_test(learner: torch.nn.Module, train: HierarchyBatches, held_out: torch.Tensor,
                  result: TrainResult, out: Path) -> int:
    """MAXL's test: the primary class (alphabet) of each held-out drawing."""
    dataset = train.dataset
    accuracy = primary_accuracy(learner, dataset, held_out)
    ci95 = _binomial_ci95(accuracy, len(held_out))
    extra = {"probe": "primary", "classes": train.primary_classes,
             "fine_classes": dataset.num_classes, "test_images": len(held_out),
             "ways": None, "shots": None, "queries": None}
    write_metrics(out, result, EvalResult(accuracy, ci95, 0, ()), extra=extra)
    print(f"primary task on held-out drawings ({train.primary_classes} alphabets, "
          f"{len(held_out)} images): accuracy = {100 * accuracy:.2f} +- {100 * ci95:.2f} %")
    return 0


def _encoder(path: str) -> torch.nn.Module:
    """The encoder of the checkpoint at ``path`` (any method's), with its trained weights."""
    return methods.encoder_of(methods.learner_from_checkpoint(_checkpoint(path)))


def _task_source(name: str, train_set: ImageDataset, data: dict[str, Any],
                 encoder: torch.nn.Module | None, options: dict[str, Any],
                 args: argparse.Namespace) -> Any:
    """Training tasks made from the images of ``train_set`` and of the ``--unlabeled``
    datasets' training splits (no label of any of them is read)."""
    entry = TASKS[name]
    if entry.needs == "encoder" and encoder is None:
        raise ValueError(f"--tasks {name} clusters the features of a trained encoder; give "
                         "--encoder CHECKPOINT (e.g. a simclr run's checkpoint.pt)")
    context: dict[str, Any] = {}
    if entry.needs == "generator":
        if not data["generator"]:
            raise ValueError(f"--tasks {name} samples a generative model; give --generator "
                             "CHECKPOINT (a vae run's checkpoint.pt)")
        vae = getattr(methods.learner_from_checkpoint(_checkpoint(data["generator"])), "method",
                      None)
        if not isinstance(vae, VAE):
            raise ValueError(f"--generator {data['generator']} is not a vae checkpoint; --tasks "
                             f"{name} needs one")
        context["vae"] = vae
    pools = {data["dataset"]: train_set.images}
    for extra in data["unlabeled"]:
        if extra in pools:
            raise ValueError(f"--unlabeled {extra} is already the training dataset")
        pools[extra] = load_dataset(extra, SPLITS[extra][0], root=args.root,
                                    image_size=data["image_size"]).images
    if data["mix"] == "pool":
        pools = {"pool": pooled(list(pools.values()))}

    def build(images: torch.Tensor, seed: int) -> Any:
        if entry.needs == "encoder":
            context["embeddings"] = embed(encoder.to(resolve_device(args.device)), images).cpu()
        try:
            return entry.build(images, data["train_ways"], data["train_shots"],
                               data["train_queries"], seed, **context, **options)
        except TypeError as err:  # an option the source does not take
            raise ValueError(f"--tasks {name}: {err}") from err

    sources = {key: build(images, args.seed + i) for i, (key, images) in enumerate(pools.items())}
    source = sources.popitem()[1] if len(sources) == 1 else Mixture(sources, seed=args.seed)
    if source.ways < 2:
        raise ValueError(f"--train-ways must be at least 2; got {source.ways}")
    return source


def _checkpoint(path_text: str) -> dict[str, Any]:
    """A checkpoint of ``train`` (a clear ``ValueError`` for anything else)."""
    path = Path(path_text)
    if not path.is_file():
        raise ValueError(f"no checkpoint at {path}")
    try:
        state = load_checkpoint(path)
        state["spec"]["learner"], state["spec"]["data"]
    except Exception as err:  # not a torch file, or not one `train` wrote
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(f"{path} is not a checkpoint written by `python -m companion train` "
                         f"({type(err).__name__}: {first_line})") from err
    return state


def _eval(args: argparse.Namespace) -> int:
    path = Path(args.checkpoint)
    state = _checkpoint(args.checkpoint)
    learner_spec, data = state["spec"]["learner"], state["spec"]["data"]
    method = methods.get(learner_spec["method"])
    learner_spec = {**learner_spec, **_config_overrides(method.name, args.set)}
    changed = {k: getattr(args, k) for k in ("dataset", "ways", "shots", "queries")
               if getattr(args, k) is not None}
    trained_ways = learner_spec["ways"]
    if method.fixed_ways and changed.get("ways", trained_ways) != trained_ways:
        raise ValueError(f"{learner_spec['method']} was trained with a {learner_spec['ways']}-way "
                         f"head and tests only on {learner_spec['ways']}-way episodes; got "
                         f"--ways {changed['ways']}")
    data = {**data, **changed}
    split = args.split or (data["test_split"] if "dataset" not in changed
                           else SPLITS[data["dataset"]][2])
    seed = data["seed"] if args.seed is None else args.seed
    sampler = _sampler(data, split, args.root, seed=seed)
    learner = methods.build_learner(**learner_spec)
    try:
        learner.load_state_dict(state["model"])
    except RuntimeError as err:  # e.g. --set full_context=True on a net trained without
        raise ValueError(f"the checkpoint's weights do not fit {learner_spec['method']} with "
                         f"--set {args.set}: {str(err).splitlines()[0]}") from err
    for name, generator in generators_of(learner).items():  # as fit left them (Reptile's)
        generator.set_state(state["rng"]["learner"][name])
    out = Path(args.out) if args.out else path.parent
    ssl = method.trains_on == "images"
    if args.probe != "fewshot":
        if not ssl:
            raise ValueError(f"--probe {args.probe} tests the encoder of a self-supervised "
                             f"checkpoint; {learner_spec['method']} is a meta-learner (use "
                             "--probe fewshot)")
        return _probe(args.probe, learner, data, split, args, out, state)
    episodes = args.episodes or get_profile(args.profile).eval_episodes
    evaluation = _evaluate(learner, sampler, episodes, device=args.device, seed=seed,
                           quiet=args.quiet)
    write_metrics(out, TrainResult.from_checkpoint(state), evaluation, sampler,
                  extra={"probe": "fewshot"} if ssl else None)
    print(f"{learner_spec['method']} on {data['dataset']}/{split}, {data['ways']}-way "
          f"{data['shots']}-shot: accuracy = {evaluation}")
    return 0


def _probe(probe: str, learner: torch.nn.Module, data: dict[str, Any], split: str,
           args: argparse.Namespace, out: Path, state: dict[str, Any]) -> int:
    """Linear or kNN probe of a self-supervised encoder on the classes of ``split``: each
    class's first half of images trains the classifier, the second half tests it."""
    dataset = _load(data, split, args.root)
    train, test = split_per_class(dataset.labels)
    encoder = learner.encoder.to(resolve_device(args.device))
    z, y = embed(encoder, dataset.images).cpu(), dataset.labels
    score = linear_probe if probe == "linear" else knn_probe
    accuracy = score(z[train], y[train], z[test], y[test])
    ci95 = _binomial_ci95(accuracy, len(test))
    evaluation = EvalResult(accuracy, ci95, 0, ())
    extra = {"probe": probe, "dataset": data["dataset"], "split": split, "ways": None,
             "shots": None, "queries": None, "classes": dataset.num_classes,
             "test_images": len(test)}
    write_metrics(out, TrainResult.from_checkpoint(state), evaluation, extra=extra)
    print(f"{state['spec']['learner']['method']} on {data['dataset']}/{split}, {probe} probe over "
          f"{dataset.num_classes} classes ({len(train)} training / {len(test)} test images): "
          f"accuracy = {100 * accuracy:.2f} +- {100 * ci95:.2f} %")
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

    train = commands.add_parser("train", help="meta-train a method, then evaluate it")
    train.add_argument("method", metavar="METHOD",
                       help="; ".join(f"{m.name}: {m.summary}" for m in
                                      methods.REGISTRY.values()))
    train.add_argument("--dataset", choices=list(DATASETS), default="glyphs")
    train.add_argument("--ways", type=_positive, default=5, help="test episodes' classes")
    train.add_argument("--shots", type=_positive, default=1, help="test episodes' shots")
    train.add_argument("--queries", type=_positive, default=15,
                       help="test episodes' queries per class (default 15)")
    train.add_argument("--train-split", default=None, help="default: train (omniglot: background)")
    train.add_argument("--val-split", default=None,
                       help="default: val (omniglot: none); 'none' skips validation")
    recipe = train.add_argument_group(
        "training recipe", "default: the method's preset for the profile (companion.methods."
        "REGISTRY; the cpu presets are the benchmark tables' 5-minute recipes), then the "
        "method's optimiser and the profile's sizes")
    recipe.add_argument("--train-ways", type=_positive, default=None,
                        help="classes of a training episode (default: --ways)")
    recipe.add_argument("--train-shots", type=_positive, default=None,
                        help="shots of a training episode (default: --shots)")
    recipe.add_argument("--train-queries", type=_positive, default=None,
                        help="queries per class of a training episode (default: --queries)")
    recipe.add_argument("--rotations", action=argparse.BooleanOptionalAction, default=None,
                        help="omniglot: rotations by 90/180/270 degrees as new training "
                             "classes")
    recipe.add_argument("--steps", type=_positive, default=None,
                        help="optimiser steps (full profile, self-supervised: `epochs` "
                             "passes over the images)")
    recipe.add_argument("--meta-batch", type=_positive, default=None,
                        help="tasks per step, or images per step for a self-supervised "
                             "method (rotation takes a quarter: its images become four)")
    recipe.add_argument("--lr", type=float, default=None, help="the outer learning rate")
    recipe.add_argument("--optimizer", choices=OPTIMIZERS, default=None)
    recipe.add_argument("--schedule", choices=SCHEDULES, default=None)
    combos = train.add_argument_group(
        "tasks without labels (chapter 6)", "a meta-learner trained on tasks made from the "
        "training images alone; their labels are never read")
    combos.add_argument("--tasks", choices=("labels", *TASKS), default="labels",
                        help="labels: human labels (default); " + "; ".join(
                            f"{e.name}: {e.summary}" for e in TASKS.values()))
    combos.add_argument("--task-set", type=_assignment, action="append", default=[],
                        metavar="OPTION=VALUE",
                        help="an option of the task source (repeatable), e.g. clusters=500 "
                             "for cactus")
    combos.add_argument("--generator", default=None, metavar="CHECKPOINT",
                        help="lasium: the vae run whose latent space the tasks are drawn from")
    combos.add_argument("--unlabeled", type=_datasets, default=[], metavar="DATASET[,DATASET]",
                        help="more unlabeled images for --tasks: these datasets' training "
                             "splits, resized to the profile's image size")
    combos.add_argument("--mix", choices=("task", "pool"), default="task",
                        help="with --unlabeled: each task from one dataset, drawn with equal "
                             "probability (task, default), or all images in one pool (pool)")
    combos.add_argument("--aux", choices=methods.AUXILIARIES, default=None,
                        help="add a self-supervised loss on the learner's encoder (chapter 8)")
    combos.add_argument("--aux-weight", type=_aux_weight, default=1.0, metavar="WEIGHT|meta",
                        help="its weight, or 'meta' to meta-learn it (chapter 7; default 1)")
    combos.add_argument("--encoder", default=None, metavar="CHECKPOINT",
                        help="start the encoder from the one in this checkpoint (any method's, "
                             "same --width); cactus also clusters its features")
    train.add_argument("--width", type=_positive, default=None,
                       help="filters per Conv-4 block, or of ResNet-12's first (default: the "
                            "profile's)")
    train.add_argument("--backbone", choices=methods.BACKBONES, default=None,
                       help="the image encoder (default: conv4; resnet12 for cifar_fs in the "
                            "full profile); the MAE keeps its ViT")
    train.add_argument("--val-every", type=_positive, default=None)
    train.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    train.add_argument("--channels-last", action="store_true",
                       help="weights and images in channels-last (NHWC) memory layout")
    train.add_argument("--compile", action="store_true",
                       help="torch.compile the learner's loss (first steps compile)")
    train.add_argument("--restart", action="store_true",
                       help="ignore a checkpoint in --out instead of resuming from it")
    train.add_argument("--no-eval", action="store_true", help="skip the test evaluation")
    train.add_argument("--stop-after", type=_positive, default=None, metavar="STEP",
                       help="stop after this many steps with a checkpoint, as if interrupted "
                            "(the same command without it resumes)")
    train.add_argument("--out", default=None,
                       help="output folder (default: runs/METHOD-DATASET-NwKs)")
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("eval", help="evaluate a checkpoint on test episodes")
    evaluate.add_argument("--checkpoint", required=True, help="a checkpoint.pt from train")
    evaluate.add_argument("--dataset", choices=list(DATASETS), default=None,
                          help="default: the training dataset")
    evaluate.add_argument("--split", default=None, help="default: the dataset's test split")
    evaluate.add_argument("--ways", type=_positive, default=None)
    evaluate.add_argument("--shots", type=_positive, default=None)
    evaluate.add_argument("--queries", type=_positive, default=None)
    evaluate.add_argument("--out", default=None,
                          help="folder for metrics.json (default: the checkpoint's)")
    evaluate.add_argument("--probe", choices=("fewshot", "linear", "knn"), default="fewshot",
                          help="self-supervised checkpoints: few-shot episodes (default), or "
                               "a linear / 20-NN classifier on the split's classes")
    evaluate.set_defaults(run=_eval)
    for p in (train, evaluate):
        p.add_argument("--episodes", type=_positive, default=None,
                       help="test episodes (default: the profile's eval_episodes)")
        p.add_argument("--profile", choices=PROFILE_NAMES, default=None)
        p.add_argument("--seed", type=int, default=0 if p is train else None,
                       help="seed of the run" if p is train else "default: the run's")
        p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
        p.add_argument("--root", default=None, help="data folder (default: $COMPANION_DATA)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.add_argument("--set", type=_assignment, action="append", default=[],
                       metavar="FIELD=VALUE",
                       help="a field of the method's config (repeatable), e.g. --set "
                            "inner_steps_test=10 for maml; at eval it overrides the trained one")
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
