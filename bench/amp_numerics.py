"""How far bfloat16 autocast moves each method's meta-gradient from float64.

For every method below, one meta-gradient (the gradient of ``learner.meta_loss`` with
respect to the learner's parameters) is computed three times from the same initial weights,
the same batch and the same random streams:

- ``float64``: the learner and the batch in double precision, the reference ``g64``;
- ``float32``: the learner as it trains by default;
- ``bf16``: float32 parameters, ``meta_loss`` under ``torch.autocast(device, bfloat16)``,
  which is what ``fit`` does with ``TrainConfig(amp=True)``;
- ``bf16_policy``: as ``fit`` runs it with ``amp=True`` after the policy of
  :func:`companion.train.amp_enabled` (a learner whose ``amp_safe`` is False runs in float32);
- ``other_batch``: float64 on another batch of the same size, the scale of the sampling
  noise that any step's gradient carries anyway, for comparison.

Each row reports the relative error ``||g - g64|| / ||g64||`` and the cosine of ``g`` and
``g64`` (all parameters flattened into one vector), and the loss of each precision. The batch
is Omniglot-sized: 28x28 glyphs (the offline ``glyphs`` dataset), Conv-4 of width 64,
5-way 1-shot with 15 queries per class for the episodic methods (Reptile on its preset's 10
shots and 1 query), 64 images for SimCLR. TF32 is switched off on CUDA so that ``float32``
means float32.

Usage::

    python bench/amp_numerics.py                    # CPU autocast (bfloat16), prints a table
    python bench/amp_numerics.py --save             # ... and writes bench/results/amp_numerics.json
    python bench/amp_numerics.py --device cuda --results gpu-check/amp_numerics_cuda.json

The result file has a small format of its own (not ``bench/result_file.py``'s accuracy
tables): ``script``, ``command``, ``commit``, ``machine``, ``when``, ``device``,
``setting`` (the batch and model), and ``rows`` ``{method: {precision: {"rel_err",
"cosine", "loss"}}}`` with ``precision`` one of ``float32``, ``bf16``, ``bf16_policy``,
``other_batch`` (``float64`` holds only its ``loss``). The row ``maml-fomaml`` is the
second-order term alone: MAML's meta-gradient minus first-order MAML's, at each precision,
against the same difference in float64.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import result_file
import torch

from companion import methods
from companion.data import EpisodeSampler, load_dataset
from companion.data.batches import ImageBatchSampler
from companion.train import amp_enabled

WAYS, SIZE, WIDTH = 5, 28, 64
EPISODIC = {  # method -> (shots, queries) of its training episodes
    "protonet": (1, 15), "maml": (1, 15), "fomaml": (1, 15), "anil": (1, 15),
    "reptile": (10, 1),
}
SSL = {"simclr": 64}  # method -> images per batch
DEFAULT = (*EPISODIC, *SSL)


def batch_for(method: str, tasks: int, seed: int = 0):
    data = load_dataset("glyphs", "train", alphabets=4)
    if method in SSL:
        return ImageBatchSampler(data, seed=seed).sample_batch(SSL[method])
    shots, queries = EPISODIC[method]
    return EpisodeSampler(data, WAYS, shots, queries, seed=seed).sample_batch(tasks)


def as_double(batch):
    if isinstance(batch, torch.Tensor):
        return batch.double()
    return batch.to(dtype=torch.float64)


def meta_gradient(learner, batch, device: str, precision: str) -> tuple[torch.Tensor, float]:
    """The flattened meta-gradient of ``learner`` (a fresh copy) at ``precision``, on CPU."""
    learner = copy.deepcopy(learner).to(device)  # copies the generators' states too
    batch = batch.to(device)
    if precision == "float64":
        learner, batch = learner.double(), as_double(batch)
    autocast = {"bf16": True, "bf16_policy": amp_enabled(learner)}.get(precision, False)
    torch.manual_seed(0)  # dropout and other draws from the global stream
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=autocast):
        loss, _ = learner.meta_loss(batch)
    params = [p for p in learner.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    flat = torch.cat([(torch.zeros_like(p) if g is None else g).flatten().double().cpu()
                      for p, g in zip(params, grads, strict=True)])
    return flat, loss.item()


PRECISIONS = ("float32", "bf16", "bf16_policy")


def gradients(method: str, tasks: int, device: str) -> dict[str, tuple[torch.Tensor, float]]:
    """``{precision: (meta-gradient, loss)}`` for every precision, and ``other_batch``."""
    torch.manual_seed(0)  # the same initial weights for every method of one architecture
    learner = methods.build_learner(method, ways=WAYS, image_size=SIZE, in_channels=1,
                                    width=WIDTH, seed=0)
    batch = batch_for(method, tasks)
    out = {p: meta_gradient(learner, batch, device, p) for p in ("float64", *PRECISIONS)}
    # the scale of sampling noise, for comparison: float64 on another batch of the same size
    out["other_batch"] = meta_gradient(learner, batch_for(method, tasks, seed=1), device,
                                       "float64")
    return out


def errors(grads: dict[str, tuple[torch.Tensor, float]]) -> dict[str, dict[str, float]]:
    g64 = grads["float64"][0]
    row: dict[str, dict[str, float]] = {"float64": {"loss": grads["float64"][1]}}
    for precision in (*PRECISIONS, "other_batch"):
        g, loss = grads[precision]
        row[precision] = {
            "rel_err": float((g - g64).norm() / g64.norm()),
            "cosine": float(torch.nn.functional.cosine_similarity(g, g64, dim=0)),
            "loss": loss,
        }
    return row


def second_order_term(maml: dict, fomaml: dict) -> dict[str, tuple[torch.Tensor, float]]:
    """MAML's meta-gradient minus first-order MAML's at the same weights and batch: the
    Hessian term that second order pays for (both start from the same seeded init)."""
    return {p: (maml[p][0] - fomaml[p][0], maml[p][1]) for p in maml if p != "other_batch"} | {
        "other_batch": (maml["other_batch"][0] - fomaml["other_batch"][0],
                        maml["other_batch"][1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (autocast's device)")
    parser.add_argument("--tasks", type=int, default=4, help="tasks per meta-batch")
    parser.add_argument("--methods", nargs="*", default=list(DEFAULT), choices=DEFAULT)
    parser.add_argument("--save", action="store_true",
                        help="write bench/results/amp_numerics.json (CPU) or --results")
    parser.add_argument("--results", type=Path, default=None, help="write here instead")
    args = parser.parse_args()
    if args.device.startswith("cuda"):
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    rows, grads = {}, {}
    print(f"device {args.device}")
    print(f"{'method':<13}{'precision':<13}{'rel_err':>10}{'cosine':>12}{'loss':>10}")
    todo = list(args.methods)
    if "maml" in todo and "fomaml" in todo:
        todo.append("maml-fomaml")  # the second-order term alone
    for method in todo:
        began = time.perf_counter()
        if method == "maml-fomaml":
            grads[method] = second_order_term(grads["maml"], grads["fomaml"])
        else:
            grads[method] = gradients(method, args.tasks, args.device)
        rows[method] = errors(grads[method])
        for precision, r in rows[method].items():
            if precision != "float64":
                print(f"{method:<13}{precision:<13}{r['rel_err']:>10.2e}{r['cosine']:>12.6f}"
                      f"{r['loss']:>10.4f}")
        print(f"{method:<13}(float64 loss {rows[method]['float64']['loss']:.4f}; "
              f"{time.perf_counter() - began:.0f} s)", flush=True)
    path = args.results
    if path is None and args.save:
        if args.device != "cpu":
            raise SystemExit("the kept file holds the CPU run; pass --results for another device")
        path = result_file.RESULTS / "amp_numerics.json"
    if path is not None:
        command = "python bench/amp_numerics.py --save"
        if args.device != "cpu" or args.tasks != 4:
            command = (f"python bench/amp_numerics.py --device {args.device} "
                       f"--tasks {args.tasks} --results {path}")
        result_file.write(path, {
            "script": "bench/amp_numerics.py", "command": command,
            "commit": result_file.commit(), "machine": result_file.machine(),
            "when": time.strftime("%Y-%m-%d %H:%M"), "device": args.device,
            "setting": {"image_size": SIZE, "width": WIDTH, "ways": WAYS,
                        "tasks": args.tasks, "episodes": {m: {"shots": s, "queries": q}
                                                          for m, (s, q) in EPISODIC.items()},
                        "ssl_batch": SSL, "autocast_dtype": "bfloat16"},
            "rows": rows})


if __name__ == "__main__":
    main()
