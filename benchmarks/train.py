"""Training-step speed and memory of `convnext_hub.finetune`'s recipe against timm, side by side.

One step is forward, backward and the AdamW update on a batch of 224x224 images,
with drop path 0.1, label smoothing 0.1 and bfloat16 compute:
  - Keras: the recipe's optimizer (`make_optimizer` over `warmup_cosine`, no
    weight decay on rank-1 variables) and loss, `mixed_bfloat16` policy. Timed
    two ways: `model.fit` on host numpy arrays (what a user gets: Keras moves
    each batch to the device), and the same compiled train function that `fit`
    calls, fed a batch already on the device (`fit` minus its input pipeline and
    callbacks; what a hand-written loop over `model.stateless_call` and
    `optimizer.stateless_apply` would also reach).
  - timm: `torch.compile`d model in channels_last under `torch.autocast(bfloat16)`,
    `torch.optim.AdamW(fused=True)` over timm's no-weight-decay parameter groups,
    cross-entropy with the same smoothing, the batch on the device.
Each model runs in its own process per Keras backend, so peak device memory is
that model's alone: JAX's allocator peak for Keras on JAX, torch's for timm and for
Keras on torch. On the JAX backend timm runs in the same process, alternately with
Keras, so both see the same machine state; the torch backend's process times Keras
alone unless `--timm-everywhere`.

`--max-batch MODEL` finds the largest batch whose training step fits in device
memory, for Keras on JAX and for timm, each in its own process: the memory of two
small batches predicts the limit, then tries around it narrow it down until
`--search-seconds` run out (the JSON says whether the search converged).

    python benchmarks/train.py --gpu                          # convnext_tiny, convnextv2_base; jax, torch
    python benchmarks/train.py --gpu --max-batch convnextv2_huge --backends jax
    python benchmarks/train.py --gpu --smoke --models convnext_atto --batch 4 --size 64   # CPU check
"""

import argparse
import json
import sys
import time

from inference import _time, depthwise_formulation, environment, run_child, write_json

MODELS = ("convnext_tiny", "convnextv2_base")
BACKENDS = ("jax", "torch")
NUM_CLASSES = 1000
PEAK_LR, WEIGHT_DECAY, LABEL_SMOOTHING, DROP_PATH = 1e-4, 0.05, 0.1, 0.1
MIB = 2**20


def _data(batch, size, samples=None, seed=0):
    """Random NHWC float32 images and integer labels (`samples` of them; default one batch)."""
    import numpy as np

    rng = np.random.RandomState(seed)
    n = samples or batch
    return rng.rand(n, size, size, 3).astype("float32"), rng.randint(0, NUM_CLASSES, n).astype("int32")


def _is_out_of_memory(error):
    text = f"{type(error).__name__}: {error}"
    return "RESOURCE_EXHAUSTED" in text or "OutOfMemory" in text or "out of memory" in text.lower()


def _torch_device(args):
    return "cuda" if args.gpu and not args.smoke else "cpu"


def _torch_peak_mib(torch, device):
    return torch.cuda.max_memory_allocated() / MIB if device == "cuda" else None


def _jax_memory(key):
    """A `memory_stats()` entry of JAX's first device in MiB (None where the platform keeps none)."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats[key] / MIB if key in stats else None


class TimmTrainer:
    """timm's side: the model compiled in channels_last, fused AdamW, autocast bfloat16; the batch on the device."""

    def __init__(self, name, args, batch):
        import timm
        import torch
        from timm.optim import param_groups_weight_decay

        self.torch, self.device = torch, _torch_device(args)
        model = timm.create_model(name, num_classes=NUM_CLASSES, drop_path_rate=DROP_PATH)
        model = model.to(self.device, memory_format=torch.channels_last).train()
        groups = param_groups_weight_decay(model, WEIGHT_DECAY)
        self.optimizer = torch.optim.AdamW(groups, lr=PEAK_LR, fused=True)
        # The smoke run checks the code path with dynamo alone (inductor's CPU build is minutes on 2 cores).
        self.model = torch.compile(
            model, backend="eager" if args.smoke else "inductor", dynamic=True if args.dynamic else None
        )
        self.loss = torch.nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING)
        self.set_batch(batch, args.size)

    def set_batch(self, batch, size):
        x, y = _data(batch, size)
        torch = self.torch
        self.x = torch.from_numpy(x).permute(0, 3, 1, 2).to(self.device).contiguous(memory_format=torch.channels_last)
        self.y = torch.from_numpy(y).long().to(self.device)

    def step(self):
        torch = self.torch
        with torch.autocast(self.device, dtype=torch.bfloat16):
            loss = self.loss(self.model(self.x), self.y)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.device == "cuda":
            torch.cuda.synchronize()
        return loss


def _keras_model(name, args):
    """The recipe's model, optimizer and loss (`convnext_hub.finetune`), compiled for `fit`."""
    import keras

    import convnext_hub
    from convnext_hub.finetune import (
        SparseCategoricalCrossentropyWithSmoothing,
        make_optimizer,
        warmup_cosine,
    )

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = convnext_hub.create_model(
        name, num_classes=NUM_CLASSES, input_shape=(args.size, args.size, 3), drop_path_rate=DROP_PATH
    )
    schedule = warmup_cosine(PEAK_LR, total_steps=10_000, warmup_steps=1_000)
    model.compile(
        optimizer=make_optimizer(model, schedule, WEIGHT_DECAY),
        loss=SparseCategoricalCrossentropyWithSmoothing(from_logits=True, label_smoothing=LABEL_SMOOTHING),
        metrics=["accuracy"],
    )
    return model


class KerasDeviceStep:
    """Runs `fit`'s compiled train function on a batch already on the device, then gives the state back.

    JAX: the function takes and donates the whole training state (`fit` holds it
    between steps the same way), so the state is taken from the model for the run
    and synced back after it. torch: the function reads the model's variables.
    """

    def __init__(self, model, x, y):
        import keras

        self.model, self.backend = model, keras.backend.backend()
        if self.backend == "jax":
            import jax

            self.data = (jax.device_put(x), jax.device_put(y))
        else:
            from keras.src.backend.torch.core import convert_to_tensor

            self.data = (convert_to_tensor(x), convert_to_tensor(y))

    def run(self, steps):
        """`steps` steps; returns the last logs (blocked on)."""
        model = self.model
        if self.backend != "jax":
            import torch

            for _ in range(steps):
                logs = model.train_function([self.data])
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            return logs
        import jax

        state = model._get_jax_state(
            trainable_variables=True,
            non_trainable_variables=True,
            optimizer_variables=True,
            metrics_variables=True,
            purge_model_variables=True,
        )
        for _ in range(steps):
            logs, state = model.train_function(state, iter([self.data]))
        jax.block_until_ready(state)
        names = ("trainable_variables", "non_trainable_variables", "optimizer_variables", "metrics_variables")
        model._jax_state, model._jax_state_synced = dict(zip(names, state)), False
        model.jax_state_sync()
        return logs


def _new_train_function(model, first):
    """Gives `model` a train function that `fit` will trace afresh (under the formulation now set).

    The first is Keras' own. JAX reuses a trace for the same Python function, and
    Keras' is always `jit(model.train_step)`: the others jit a new function around
    `train_step`, as Keras does, so each formulation gets its own trace.
    """
    import keras

    if first or keras.backend.backend() != "jax":
        model.make_train_function(force=True)
        return
    import jax

    step = jax.jit(lambda state, data: model.train_step(state, data), donate_argnums=0)
    model.train_function = model._make_function(step)


def measure_speed(args):
    """One model: timm, then for each depthwise formulation Keras `fit` and device steps, timed alternately.

    Prints a `RESULT` line after each formulation, so a run cut short keeps the
    formulations it finished.
    """
    import timm  # noqa: F401
    import torch  # torch / timm before keras (TensorFlow): see README

    # isort: split
    import keras

    name, backend, device = args.models[0], keras.backend.backend(), _torch_device(args)
    steps = args.fit_steps
    x_all, y_all = _data(args.batch, args.size, samples=args.batch * steps)
    result = dict(
        model=name,
        backend=backend,
        batch=args.batch,
        size=args.size,
        fit_steps=steps,
        precision="keras mixed_bfloat16 / timm autocast bfloat16",
        keras={},
        timm=None,
    )

    timm_side, timm_s = None, []
    if backend == "jax" or args.timm_everywhere:
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        timm_side = TimmTrainer(name, args, args.batch)
        for _ in range(args.warmup):
            timm_side.step()
        result["timm"] = dict(peak_mib=_torch_peak_mib(torch, device), mode="torch.compile, fused AdamW")

    if device == "cuda" and backend == "torch":
        torch.cuda.reset_peak_memory_stats()
    model = _keras_model(name, args)
    formulations = (args.depthwise or [None]) if backend == "jax" else [None]
    for index, formulation in enumerate(formulations):
        with depthwise_formulation(formulation):
            _new_train_function(model, first=index == 0)
            compile_start = time.perf_counter()
            model.fit(x_all, y_all, batch_size=args.batch, epochs=1, steps_per_epoch=1, verbose=0, shuffle=False)
            first_step_s = time.perf_counter() - compile_start
            device_step = KerasDeviceStep(model, x_all[: args.batch], y_all[: args.batch])
            device_step.run(steps)
        entry = result["keras"][formulation or "auto"] = dict(first_step_s=round(first_step_s, 2))
        if index == 0:  # the allocators keep one peak per process: only the first one is this formulation's
            entry["peak_mib"] = _jax_memory("peak_bytes_in_use") if backend == "jax" else _torch_peak_mib(torch, device)

        def fit(formulation=formulation):
            with depthwise_formulation(formulation):
                model.fit(x_all, y_all, batch_size=args.batch, epochs=1, verbose=0, shuffle=False)

        def device_steps(formulation=formulation, device_step=device_step):
            with depthwise_formulation(formulation):
                device_step.run(steps)

        fit_s, step_s, round_timm_s = [], [], []
        for _ in range(args.rounds):  # alternate, so drift hits every side
            if timm_side is not None:
                round_timm_s.append(_time(timm_side.step, args.seconds))
            fit_s.append(_time(fit, args.seconds) / steps)
            step_s.append(_time(device_steps, args.seconds) / steps)
        timm_s += round_timm_s
        timm_ips = args.batch / min(round_timm_s) if round_timm_s else None
        fit_ips, step_ips = args.batch / min(fit_s), args.batch / min(step_s)
        entry.update(
            fit_img_s=round(fit_ips, 2),
            device_step_img_s=round(step_ips, 2),
            fit_vs_timm=round(fit_ips / timm_ips, 3) if timm_ips else None,
            device_step_vs_timm=round(step_ips / timm_ips, 3) if timm_ips else None,
        )
        if timm_s:
            result["timm"]["img_s"] = round(args.batch / min(timm_s), 2)
        print("RESULT " + json.dumps(dict(result=result, environment=environment())), flush=True)
    return result


def largest_batch(fits, start, limit, deadline, predict=None, report=None):
    """The largest batch in [1, limit] for which `fits(batch)` is true, searched until `deadline`.

    `fits(batch)` returns (ok, bytes) where bytes is the step's peak device memory
    when known. The first two tries (`start`, `2 * start`) give the memory per
    sample and the fixed part; the next try is `predict(fixed, per_sample)`, then
    steps up or bisects. Without memory figures it doubles. `report`, if given,
    gets the summary after every try (a run cut short keeps it).

    Returns:
        dict: `largest_fitting`, `smallest_failing` (None if none failed),
        `converged` (the two are within 3%, or the limit fits) and every try.
    """
    ok, failed, tries = 0, limit + 1, []

    def summary():
        return dict(
            largest_fitting=ok,
            smallest_failing=failed if failed <= limit else None,
            converged=failed - ok <= max(1, ok // 32) or ok >= limit,
            tries=tries,
        )

    def attempt(batch):
        nonlocal ok, failed
        t0 = time.perf_counter()
        fitted, used = fits(batch)
        tries.append(
            dict(
                batch=batch,
                fits=fitted,
                peak_mib=used and round(used / MIB),
                seconds=round(time.perf_counter() - t0, 1),
            )
        )
        if fitted:
            ok = max(ok, batch)
        else:
            failed = min(failed, batch)
        if report:
            report(summary())
        return used

    used_small = attempt(start)
    used_large = attempt(2 * start) if time.perf_counter() < deadline and ok == start else None
    if predict and used_small and used_large and ok == 2 * start and time.perf_counter() < deadline:
        per_sample = (used_large - used_small) / start
        guess = predict(used_small - per_sample * start, per_sample)
        guess = max(ok + 1, min(failed - 1, int(guess) // 8 * 8 or ok + 1))
        attempt(guess)
    predicted = len(tries) > 2
    while failed - ok > max(1, ok // 32) and time.perf_counter() < deadline:
        if failed > limit:  # no failure yet: step up (gently past a prediction that fitted)
            nxt = min(ok + max(ok // 8, 1) if predicted else 2 * ok, limit)
        else:
            nxt = (ok + failed) // 2
        if nxt <= ok:
            break
        attempt(nxt)
    return summary()


def measure_max_batch(args):
    """Largest training batch of `args.max_batch`: Keras on JAX in a JAX process, timm in a torch one."""
    import timm  # noqa: F401
    import torch  # torch / timm before keras (TensorFlow): see README

    # isort: split
    import keras

    name, backend, device = args.max_batch, keras.backend.backend(), _torch_device(args)
    deadline = time.perf_counter() + args.search_seconds
    if backend == "torch":  # timm alone: Keras on torch is not searched
        trainer = [None]
        capacity = torch.cuda.mem_get_info()[1] if device == "cuda" else None

        def fits(batch):
            try:
                if trainer[0] is None:
                    trainer[0] = TimmTrainer(name, args, batch)
                else:
                    trainer[0].set_batch(batch, args.size)
                if device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                trainer[0].step()
                trainer[0].step()
                return True, torch.cuda.max_memory_allocated() if device == "cuda" else None
            except Exception as error:
                if not _is_out_of_memory(error):
                    raise
                if trainer[0] is not None:  # free what the failed step left: gradients, the batch
                    trainer[0].optimizer.zero_grad(set_to_none=True)
                    trainer[0].x = trainer[0].y = None
                if device == "cuda":
                    torch.cuda.empty_cache()
                return False, None

        side = "timm (torch.compile, dynamic batch)" if args.dynamic else "timm (torch.compile)"
    else:
        import jax

        model = _keras_model(name, args)
        model._symbolic_build(data_batch=_data(1, args.size))  # what `fit` does first: builds optimizer, metrics
        step = jax.jit(model.train_step, donate_argnums=0)  # what `fit` compiles
        state = [
            model._get_jax_state(
                trainable_variables=True,
                non_trainable_variables=True,
                optimizer_variables=True,
                metrics_variables=True,
                purge_model_variables=True,
            )
        ]
        shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state[0])
        capacity = (jax.devices()[0].memory_stats() or {}).get("bytes_limit")

        def fits(batch):
            x, y = _data(batch, args.size)
            data = (jax.device_put(x), jax.device_put(y))
            try:
                compiled = step.lower(state[0], data).compile()
                memory = compiled.memory_analysis()
                used = (
                    None
                    if memory is None
                    else (
                        memory.argument_size_in_bytes
                        + memory.output_size_in_bytes
                        - memory.alias_size_in_bytes
                        + memory.temp_size_in_bytes
                    )
                )
                for _ in range(2):
                    _, state[0] = compiled(state[0], data)
                jax.block_until_ready(state[0])
                return True, used
            except Exception as error:
                if not _is_out_of_memory(error):
                    raise
                # The donated state may be gone: fresh zeros take its place (memory is all that is measured).
                state[0] = jax.tree.map(lambda s: jax.numpy.zeros(s.shape, s.dtype), shapes)
                return False, None

        side = "keras jax (fit's train step, mixed_bfloat16)"

    # Aim a little under the capacity: allocators fragment, and a first try that fits narrows faster.
    predict = (lambda fixed, per_sample: (0.95 * capacity - fixed) / per_sample) if capacity else None
    header = dict(
        model=name, backend=backend, side=side, size=args.size, capacity_mib=capacity and round(capacity / MIB)
    )

    def report(found):
        print("RESULT " + json.dumps(dict(result={**header, **found}, environment=environment())), flush=True)

    largest_batch(fits, args.search_start, args.search_limit, deadline, predict, report)


def _child(args):
    """Runs the measurement; it prints a `RESULT` line whenever it has more to report."""
    if args.max_batch:
        measure_max_batch(args)
    else:
        measure_speed(args)


def _summary(rows):
    """Lines of img/s, ratios, peaks and batch limits for the printed report."""
    lines = []
    for r in rows:
        if "error" in r:
            lines.append(f"{r.get('label', '?')}: FAILED ({r['error']})")
            continue
        if r.get("partial"):
            lines.append(f"{r['model']} [{r['backend']}]: cut short ({r['partial']['error']}); what it measured:")
        if "largest_fitting" in r:
            lines.append(
                f"{r['model']} max batch, {r['side']}: {r['largest_fitting']} fits"
                f" (smallest failing {r['smallest_failing']}, converged {r['converged']})"
            )
        else:
            timm = r["timm"] or {}
            lines.append(
                f"{r['model']} [{r['backend']}] batch {r['batch']}: timm {timm.get('img_s', '-')} img/s,"
                f" peak {_mib(timm.get('peak_mib'))}"
            )
            for label, k in r["keras"].items():
                lines.append(
                    f"  keras depthwise={label}: fit {k['fit_img_s']} img/s (x{k['fit_vs_timm']}),"
                    f" device step {k['device_step_img_s']} (x{k['device_step_vs_timm']}),"
                    f" peak {_mib(k.get('peak_mib'))}, first step {k['first_step_s']} s"
                )
    return "\n".join(lines)


def _mib(value):
    return "-" if value is None else f"{value:,.0f} MiB"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--gpu", action="store_true", help="timm on CUDA; Keras on its backend's GPU")
    parser.add_argument("--smoke", action="store_true", help="run the --gpu code paths on the CPU (tiny sizes)")
    parser.add_argument(
        "--depthwise",
        nargs="+",
        metavar="SPEC",
        help="JAX depthwise formulations to time side by side (NAME or NAME:MAX_CHANNELS)",
    )
    parser.add_argument("--fit-steps", type=int, default=10, help="batches per timed `fit` call")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0, help="minimum time per measurement")
    parser.add_argument("--timm-everywhere", action="store_true", help="time timm in the torch backend's process too")
    parser.add_argument("--max-batch", metavar="MODEL", help="search the largest training batch of MODEL instead")
    parser.add_argument("--search-start", type=int, default=16)
    parser.add_argument("--search-limit", type=int, default=4096)
    parser.add_argument("--search-seconds", type=float, default=150.0, help="time allowed to each side's search")
    parser.add_argument("--dynamic", action="store_true", help="compile timm for any batch size (max-batch search)")
    parser.add_argument("--timeout", type=float, help="seconds allowed to each child process")
    parser.add_argument("--json", help="write the results, with versions and device, to this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke and not args.gpu:
        parser.error("--smoke goes with --gpu")
    if args.child:
        return _child(args)

    argv = list(argv if argv is not None else sys.argv[1:])
    rows, env_info = [], None
    jobs = (
        [(b, args.max_batch) for b in args.backends]
        if args.max_batch
        else [(b, m) for m in args.models for b in args.backends]
    )
    for backend, name in jobs:
        child_argv = argv if args.max_batch else [*argv, "--models", name]  # the last --models wins
        # JAX may take only 75% of the GPU by default; timm may take it all. The search lets it have as much.
        env_extra = {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.97"} if args.max_batch and backend == "jax" else None
        out = run_child(__file__, backend, child_argv, args.timeout, env_extra)
        if "error" in out:
            print(f"{name} [{backend}]: failed ({out['error']})\n{out['stderr']}", file=sys.stderr)
            rows.append(dict(label=f"{name} [{backend}]", **out))
        else:
            if "partial" in out:
                print(
                    f"{name} [{backend}]: cut short ({out['partial']['error']})\n{out['partial']['stderr']}",
                    file=sys.stderr,
                )
            rows.append(dict(out["result"], partial=out.get("partial")))
            env_info = out["environment"]
        if args.json:  # after every child, so a run cut short keeps what it measured
            write_json(args.json, dict(benchmark="train", argv=argv, results=rows, environment=env_info))
    print(_summary(rows))
    return 0 if rows and not any("error" in r or r.get("partial") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
