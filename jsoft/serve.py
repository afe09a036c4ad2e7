"""An HTTP JSON server for many soft-prompt adapters on one frozen backbone.

    python -m jsoft.serve --model MODEL_DIR --adapters DIR_OF_ADAPTERS --port 8000 \\
        [--host 127.0.0.1] [--task causal_lm|seq2seq_lm|seq_cls|token_cls] [--max-batch-size 16] \\
        [--batch-wait-ms 5] [--max-new-tokens-limit 512] [--dtype float32]

Each subdirectory of DIR_OF_ADAPTERS is an adapter (PEFT's or jsoft's format) named after it,
loaded on first use. Endpoints:

    GET  /health    {"status": "ok", "adapters": [registered], "loaded": [...], "failed": {name: why}}
    GET  /adapters  {"adapters": [{"name", "virtual_tokens", "loaded", "error"}]}
    GET  /stats     model calls, rows, compiled programs (batching at work)
    POST /generate  {"adapter", "prompt" | "prompts", "max_new_tokens", "temperature", "top_k", "top_p",
                     "seed", "do_sample", "num_return_sequences", "repetition_penalty", "no_repeat_ngram_size",
                     "min_new_tokens"}
                    -> {"completions", "token_ids", "finish_reasons"}: one per prompt, or with
                    num_return_sequences n (sampling) n per prompt, prompt j's at j*n .. j*n+n-1
    POST /classify  {"adapter", "text" | "texts"} -> {"labels", "probabilities"} over the adapter's own labels
                    (names from its jsoft_labels.json, else the model's); multi-label: the labels above 0.5
                    and sigmoids; regression: {"scores"}

Requests for different adapters are batched together: a queue collects rows for up to
--batch-wait-ms or --max-batch-size rows, takes the rows that can share one model call (same
endpoint; for /generate the same sampling parameters and max_new_tokens bucket) and runs them as
one mixed-adapter batch (`jsoft.multitask`) in a worker thread. Greedy decoding gives what
`PeftModel.generate` gives for the row alone; sampling draws sample k of prompt j of a request
from (seed, j*n + k) whatever the batch, as `PeftModel.generate(prompts, seed=seed,
num_return_sequences=n)` does. Errors are JSON
`{"error": message, ...}` with a 4xx status for bad requests, 404 for an unknown adapter, 500
for an adapter whose files cannot be loaded.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from jsoft.multitask import (
    CLASSIFY_TASKS,
    GENERATE_TASKS,
    AdapterLoadError,
    MultiTaskModel,
    Sampling,
    UnknownAdapter,
    bucket,
)

MAX_ITEMS = 256  # prompts or texts in one request


class ApiError(Exception):
    def __init__(self, status: int, message: str, **extra: Any):
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


# --------------------------------------------------------------------------- batching


@dataclasses.dataclass
class _Item:
    key: Hashable
    row: Any
    future: asyncio.Future
    arrival: float


class Batcher:
    """Collects rows from concurrent requests and runs compatible ones as one call.

    `run(key, rows) -> results` (one per row) runs in a single worker thread, so the event loop
    keeps accepting requests; while it runs, the next batch fills up. A batch is the oldest
    waiting row plus the other rows with its key, up to `max_rows`, taken once that many wait or
    the oldest has waited `wait_s`."""

    def __init__(self, run: Callable[[Hashable, list], list], max_rows: int, wait_s: float):
        self.run, self.max_rows, self.wait_s = run, max_rows, wait_s
        self._pending: deque[_Item] = deque()
        self._wake: asyncio.Event | None = None  # made in start(), on the serving loop
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="jsoft-model")
        self._task: asyncio.Task | None = None
        self.calls = 0

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for item in self._pending:
            if not item.future.done():
                item.future.set_exception(RuntimeError("the server is shutting down"))
        self._pending.clear()
        self._executor.shutdown(wait=True)

    async def submit(self, key: Hashable, rows: Sequence) -> list:
        if self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running (start the app's lifespan)")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in rows]
        now = loop.time()
        self._pending.extend(_Item(key, row, f, now) for row, f in zip(rows, futures))
        self._wake.set()
        return list(await asyncio.gather(*futures))

    def _take(self) -> list[_Item] | None:
        """The next batch, or None while the oldest row may still wait for company."""
        while self._pending and self._pending[0].future.done():  # its request was cancelled
            self._pending.popleft()
        if not self._pending:
            return None
        key = self._pending[0].key
        same = [i for i in self._pending if i.key == key and not i.future.done()][:self.max_rows]
        waited = asyncio.get_running_loop().time() - self._pending[0].arrival
        if len(same) < self.max_rows and waited < self.wait_s:
            return None
        taken = {id(i) for i in same}
        self._pending = deque(i for i in self._pending if id(i) not in taken)
        return same

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = self._take()
            if batch is None:
                self._wake.clear()
                timeout = None
                if self._pending:
                    timeout = max(self.wait_s - (loop.time() - self._pending[0].arrival), 0.0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                continue
            self.calls += 1
            try:
                results = await loop.run_in_executor(self._executor, self.run, batch[0].key,
                                                      [i.row for i in batch])
            except Exception as e:  # the requests of this batch fail; the server goes on
                for i in batch:
                    if not i.future.done():
                        i.future.set_exception(e)
                continue
            for i, r in zip(batch, results):
                if not i.future.done():
                    i.future.set_result(r)


# --------------------------------------------------------------------------- requests


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    adapter: str
    prompt: str | None = None
    prompts: list[str] | None = Field(None, min_length=1, max_length=MAX_ITEMS)
    max_new_tokens: int = 16
    do_sample: bool | None = Field(None, description="default: sample when temperature > 0 is given")
    temperature: float | None = None
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    num_return_sequences: int = 1
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    min_new_tokens: int = 0


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    adapter: str
    text: str | None = None
    texts: list[str] | None = Field(None, min_length=1, max_length=MAX_ITEMS)


def _one_of(single: str | None, many: list[str] | None, names: tuple[str, str]) -> list[str]:
    if (single is None) == (many is None):
        raise ApiError(400, f"give exactly one of {names[0]!r} (a string) or {names[1]!r} (a list of strings)")
    return [single] if single is not None else many


def _sampling(r: GenerateRequest, limit: int) -> Sampling:
    if not 1 <= r.max_new_tokens <= limit:
        raise ApiError(400, f"max_new_tokens={r.max_new_tokens} must be between 1 and this server's limit {limit}",
                       max_new_tokens_limit=limit)
    if not (r.repetition_penalty > 0 and r.no_repeat_ngram_size >= 0 and 0 <= r.min_new_tokens <= r.max_new_tokens):
        raise ApiError(400, "need repetition_penalty > 0, no_repeat_ngram_size >= 0 and 0 <= min_new_tokens <= "
                       f"max_new_tokens; got repetition_penalty={r.repetition_penalty}, no_repeat_ngram_size="
                       f"{r.no_repeat_ngram_size}, min_new_tokens={r.min_new_tokens}")
    processors = dict(repetition_penalty=float(r.repetition_penalty), no_repeat_ngram_size=r.no_repeat_ngram_size,
                      min_new_tokens=r.min_new_tokens)
    do_sample = r.do_sample if r.do_sample is not None else bool(r.temperature)
    if r.num_return_sequences < 1 or (r.num_return_sequences > 1 and not do_sample):
        raise ApiError(400, f"num_return_sequences={r.num_return_sequences} must be 1, or more with sampling "
                       "(do_sample=true or temperature > 0): greedy decoding returns one sequence per prompt")
    if not do_sample:
        return Sampling(**processors)
    temperature = 1.0 if r.temperature is None else r.temperature
    if not (temperature > 0 and 0 < r.top_p <= 1 and r.top_k >= 0 and 0 <= r.seed < 2 ** 32):
        raise ApiError(400, "sampling needs temperature > 0, 0 < top_p <= 1, top_k >= 0 and 0 <= seed < 2**32; got "
                       f"temperature={temperature}, top_p={r.top_p}, top_k={r.top_k}, seed={r.seed}")
    return Sampling(True, float(temperature), r.top_k, float(r.top_p), **processors)


# --------------------------------------------------------------------------- the app


def create_app(model: MultiTaskModel, *, max_batch_size: int = 16, batch_wait_ms: float = 5.0,
               max_new_tokens_limit: int = 512) -> FastAPI:
    """The FastAPI app serving `model` (use as `with TestClient(create_app(m)) as c:` in tests)."""
    if max_new_tokens_limit < 1 or batch_wait_ms < 0:
        raise ValueError(f"need max_new_tokens_limit >= 1 and batch_wait_ms >= 0, got {max_new_tokens_limit}, "
                         f"{batch_wait_ms}")
    max_batch_size = min(max_batch_size, model.max_batch_size)
    counts = {"requests": 0, "errors": 0}
    loader = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="jsoft-load")

    def run(key: Hashable, rows: list) -> list:
        names, ids = [r[0] for r in rows], [r[1] for r in rows]
        if key[0] == "classify":
            return model.classify(names, ids)
        return model.generate(names, ids, [r[2] for r in rows], key[2], [r[3] for r in rows])

    batcher = Batcher(run, max_batch_size, batch_wait_ms / 1000)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            loader.shutdown(wait=True)

    app = FastAPI(title="jsoft multi-adapter server", lifespan=lifespan)
    app.state.model, app.state.batcher = model, batcher

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        counts["errors"] += 1
        return JSONResponse({"error": e.message, **e.extra}, status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        counts["errors"] += 1
        errors = e.errors()
        if any(err.get("type") == "json_invalid" for err in errors):
            return JSONResponse({"error": "the request body is not valid JSON"}, status_code=400)
        where = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in errors)
        return JSONResponse({"error": f"invalid request: {where}",
                             "detail": [{k: err[k] for k in ("loc", "msg", "type")} for err in errors]},
                            status_code=422)

    async def prepare(name: str, texts: list[str], endpoint: str, max_new_tokens: int = 0) -> list[list[int]]:
        """Check the adapter and the texts; load the adapter on first use; tokenize."""
        counts["requests"] += 1
        tasks = GENERATE_TASKS if endpoint == "generate" else CLASSIFY_TASKS
        if model.task not in tasks:
            other = "/classify" if endpoint == "generate" else "/generate"
            raise ApiError(400, f"/{endpoint} needs a model with task in {list(tasks)}; this server's model has "
                           f"task={model.task!r}: use {other}")
        try:
            model.check_known(name)
            await asyncio.get_running_loop().run_in_executor(loader, model.ensure_loaded, name)
        except UnknownAdapter as e:
            raise ApiError(404, str(e), adapters=e.known) from None
        except AdapterLoadError as e:
            raise ApiError(500, str(e), adapter=name) from None
        ids = [model.tokenizer(t)["input_ids"] for t in texts]
        room = model.max_input_tokens(name, max_new_tokens)
        for i, x in enumerate(ids):
            if not x:
                raise ApiError(400, f"input {i} is empty after tokenization")
            if len(x) > room:
                raise ApiError(413, f"input {i} has {len(x)} tokens but at most {room} fit: the model has "
                               f"{model.max_positions} positions, adapter {name!r} takes {model.virtual_tokens(name)}"
                               + (f" and max_new_tokens={max_new_tokens}" if model.task == "causal_lm" else ""),
                               input_tokens=len(x), max_input_tokens=room, max_positions=model.max_positions,
                               virtual_tokens=model.virtual_tokens(name))
        return ids

    async def batched(key: Hashable, rows: list) -> list:
        try:
            return await batcher.submit(key, rows)
        except Exception as e:
            raise ApiError(500, f"model call failed: {type(e).__name__}: {e}") from None

    @app.get("/health")
    async def health():
        return {"status": "ok", "task": model.task, "adapters": model.registered, "loaded": model.loaded,
                "failed": model.failed}

    @app.get("/adapters")
    async def adapters():
        failed = model.failed
        loaded = set(model.loaded)
        return {"adapters": [{"name": n, "virtual_tokens": model.virtual_tokens(n), "loaded": n in loaded,
                              "error": failed.get(n)} for n in model.registered]}

    @app.get("/stats")
    async def stats():
        return {**counts, **model.stats, "batches": batcher.calls, "compiled_programs": model.compiled_programs(),
                "shapes": sorted(str(s) for s in model.shapes)}

    @app.post("/generate")
    async def generate(r: GenerateRequest):
        prompts = _one_of(r.prompt, r.prompts, ("prompt", "prompts"))
        sampling, n = _sampling(r, max_new_tokens_limit), r.num_return_sequences
        if len(prompts) * n > MAX_ITEMS:
            raise ApiError(400, f"{len(prompts)} prompts x num_return_sequences={n} asks for {len(prompts) * n} "
                           f"sequences; at most {MAX_ITEMS} per request")
        ids = await prepare(r.adapter, prompts, "generate", r.max_new_tokens)
        key = ("generate", bucket(r.max_new_tokens), sampling)
        new = await batched(key, [(r.adapter, x, r.max_new_tokens, (r.seed, j * n + k))
                                  for j, x in enumerate(ids) for k in range(n)])
        eos = set(model.eos_token_ids)
        out = {"completions": [], "token_ids": [], "finish_reasons": []}
        for tokens in new:
            tokens = [int(t) for t in tokens]
            end = next((j for j, t in enumerate(tokens) if t in eos), None)
            kept = tokens if end is None else tokens[:end]
            out["completions"].append(model.tokenizer.decode(kept, skip_special_tokens=True))
            out["token_ids"].append(kept)
            out["finish_reasons"].append("length" if end is None else "stop")
        return out

    @app.post("/classify")
    async def classify(r: ClassifyRequest):
        texts = _one_of(r.text, r.texts, ("text", "texts"))
        ids = await prepare(r.adapter, texts, "classify")
        scores = await batched(("classify",), [(r.adapter, x) for x in ids])
        labels = model.labels(r.adapter)
        if model.task == "seq_cls" and labels.problem_type == "regression":
            return {"scores": [labels.predicted(p) for p in scores]}
        if model.task == "seq_cls":
            return {"labels": [labels.predicted(p) for p in scores], "probabilities": [p.tolist() for p in scores]}
        return {"labels": [[labels.predicted(t) for t in p] for p in scores],
                "tokens": [model.tokenizer.convert_ids_to_tokens(x) for x in ids],
                "probabilities": [p.tolist() for p in scores]}

    return app


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m jsoft.serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="base model: local dir or Hub id (its tokenizer too)")
    ap.add_argument("--adapters", required=True, help="a directory whose subdirectories are adapters")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--task", choices=[*GENERATE_TASKS, *CLASSIFY_TASKS],
                    help="the model's task (default: the adapters' task_type)")
    ap.add_argument("--max-batch-size", type=int, default=16)
    ap.add_argument("--batch-wait-ms", type=float, default=5.0)
    ap.add_argument("--max-new-tokens-limit", type=int, default=512)
    ap.add_argument("--dtype", default="float32", help="compute dtype (float32, bfloat16)")
    ap.add_argument("--log-level", default="info")
    args = ap.parse_args(argv)

    import uvicorn

    t0 = time.perf_counter()
    model = MultiTaskModel(args.model, args.adapters, task=args.task, dtype=args.dtype,
                           max_batch_size=args.max_batch_size)
    print(f"loaded {args.model} (task={model.task}) in {time.perf_counter() - t0:.1f}s; "
          f"{len(model.registered)} adapters registered: {model.registered}", flush=True)
    app = create_app(model, max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms,
                     max_new_tokens_limit=args.max_new_tokens_limit)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
